"""ROI selection and pyramid ROIAlign over flat lists of boxes.

The heads run on flat ROI lists ``[K, ...]`` (K = all boxes of the batch that are selected),
so in training the mask head sees only positive ROIs and in inference only real detections,
not padded slots. ``SelectBoxes`` flattens, ``GatherRows`` picks the matching targets,
``ScatterToSlots``/``UnflattenRois`` put results back into ``[B, N, ...]``.
"""

import math

import keras
import tensorflow as tf

from mrcnn.ops.image import parse_image_meta_graph


@keras.saving.register_keras_serializable(package="mrcnn")
class SelectBoxes(keras.layers.Layer):
    """Flatten a batch of boxes into the list of rows the heads should process.

    Modes and call inputs:
        ``all``: boxes [B, N, 4] -> every row.
        ``positive``: [boxes [B, N, 4], class_ids [B, N]] -> rows with class_id > 0.
        ``detections``: detections [B, D, 6] -> the boxes of rows with class_id (col 4) > 0.

    Outputs: ``boxes [K, 4]`` (same units as input), ``batch_index [K]`` int32,
    ``flat_index [K]`` int32 (row in the flattened [B * N] list).

    ``per_image_limit`` keeps at most that many rows of each image (its first columns: the
    detection targets put the positives first, in random order), None keeps all.

    With ``min_one`` an empty selection returns row 0 instead, so the heads never see an empty
    batch (TensorFlow's CPU conv gradient, and grappler's folding of convs on empty tensors,
    fail on zero rows); callers ignore rows whose class id is 0 (losses, unmolding).
    """

    MODES = ("all", "positive", "detections")

    def __init__(self, mode="all", min_one=False, per_image_limit=None, **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"SelectBoxes mode {mode!r}; use one of {self.MODES}")
        self.mode = mode
        self.min_one = bool(min_one)
        self.per_image_limit = None if per_image_limit is None else int(per_image_limit)

    def call(self, inputs):
        if self.mode == "positive":
            boxes, selector = inputs
        elif self.mode == "detections":
            boxes, selector = inputs[..., :4], inputs[..., 4]
        else:
            boxes, selector = inputs, None
        shape = tf.shape(boxes)
        flat_boxes = tf.reshape(boxes, [-1, 4])
        if selector is None:
            flat_index = tf.range(shape[0] * shape[1], dtype=tf.int32)
        else:
            keep = selector > 0
            if self.per_image_limit is not None:
                keep = keep & (tf.range(shape[1])[None, :] < self.per_image_limit)
            flat_index = tf.cast(tf.where(tf.reshape(keep, [-1]))[:, 0], tf.int32)
            if self.min_one:
                flat_index = tf.cond(tf.size(flat_index) > 0, lambda: flat_index,
                                     lambda: tf.zeros([1], tf.int32))
        batch_index = flat_index // shape[1]
        return (tf.stop_gradient(tf.gather(flat_boxes, flat_index)), batch_index, flat_index)

    def compute_output_shape(self, input_shape):
        return ((None, 4), (None,), (None,))

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "min_one": self.min_one,
                "per_image_limit": self.per_image_limit}


@keras.saving.register_keras_serializable(package="mrcnn")
class GatherRows(keras.layers.Layer):
    """Rows of a [B, N, ...] tensor at flat indices -> [K, ...]."""

    def call(self, inputs):
        values, flat_index = inputs
        shape = tf.shape(values)
        flat = tf.reshape(values, tf.concat([[shape[0] * shape[1]], shape[2:]], 0))
        return tf.gather(flat, flat_index)

    def compute_output_shape(self, input_shape):
        return (None,) + tuple(input_shape[0][2:])


@keras.saving.register_keras_serializable(package="mrcnn")
class ScatterToSlots(keras.layers.Layer):
    """Put rows [K, ...] back at their flat indices of a zero [B, N, ...] tensor.

    Call inputs: ``[values [K, ...], flat_index [K], reference [B, N, ...]]`` (only the
    reference's first two dims are used).
    """

    def call(self, inputs):
        values, flat_index, reference = inputs
        ref = tf.shape(reference)
        rows = ref[0] * ref[1]
        tail = tf.shape(values)[1:]
        out = tf.scatter_nd(flat_index[:, None], values, tf.concat([[rows], tail], 0))
        return tf.reshape(out, tf.concat([ref[:2], tail], 0))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[2][:2]) + tuple(input_shape[0][1:])


@keras.saving.register_keras_serializable(package="mrcnn")
class UnflattenRois(keras.layers.Layer):
    """Reshape [B * N, ...] back to [B, N, ...] using a reference [B, N, ...]."""

    def call(self, inputs):
        values, reference = inputs
        return tf.reshape(values, tf.concat([tf.shape(reference)[:2], tf.shape(values)[1:]], 0))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[1][:2]) + tuple(input_shape[0][1:])


@keras.saving.register_keras_serializable(package="mrcnn")
class ContextBoxes(keras.layers.Layer):
    """Each box grown ``factor`` times in height and width about its centre and clipped to
    the molded image ([0, 1]): the surroundings the box head sees beside the box itself.

    Call input: boxes [K, 4] normalised (y1, x1, y2, x2). Output: [K, 4] normalised.
    """

    def __init__(self, factor, **kwargs):
        super().__init__(**kwargs)
        self.factor = float(factor)

    def call(self, boxes):
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2.0
        half = (boxes[:, 2:] - boxes[:, :2]) * (self.factor / 2.0)
        return tf.clip_by_value(tf.concat([centre - half, centre + half], axis=1), 0.0, 1.0)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


@keras.saving.register_keras_serializable(package="mrcnn")
class PyramidROIAlign(keras.layers.Layer):
    """Crop-and-resize each box from the pyramid level that fits its size.

    Level = 4 + log2(sqrt(h * w) / (224 / sqrt(image_area))), clipped to P2..P5 (FPN paper,
    eq. 1, with boxes normalised so 224 px is relative to the molded image area).

    Call inputs: ``[boxes [K, 4] normalised, batch_index [K] int32, image_meta [B, META],
    P2, P3, P4, P5]`` with P_l of shape [B, H_l, W_l, C].
    Output: [K, pool_h, pool_w, C].
    """

    def __init__(self, pool_shape, **kwargs):
        super().__init__(**kwargs)
        self.pool_shape = tuple(int(v) for v in pool_shape)

    def call(self, inputs):
        boxes, batch_index, image_meta = inputs[:3]
        feature_maps = inputs[3:]
        y1, x1, y2, x2 = tf.unstack(boxes, axis=1)
        image_shape = tf.cast(parse_image_meta_graph(image_meta)["image_hw"][0], tf.float32)
        image_area = image_shape[0] * image_shape[1]
        size = tf.sqrt(tf.maximum((y2 - y1) * (x2 - x1), 1e-12))
        level = 4.0 + tf.math.log(size / (224.0 / tf.sqrt(image_area))) / math.log(2.0)
        level = tf.clip_by_value(tf.cast(tf.round(level), tf.int32), 2, 5)
        pooled, order = [], []
        for i, level_value in enumerate(range(2, 6)):
            ix = tf.cast(tf.where(tf.equal(level, level_value))[:, 0], tf.int32)
            pooled.append(tf.image.crop_and_resize(
                feature_maps[i], tf.gather(boxes, ix), tf.gather(batch_index, ix),
                self.pool_shape, method="bilinear"))
            order.append(ix)
        pooled = tf.concat(pooled, axis=0)
        order = tf.concat(order, axis=0)
        return tf.gather(pooled, tf.math.invert_permutation(order))

    def compute_output_shape(self, input_shape):
        return (None,) + self.pool_shape + (input_shape[3][-1],)

    def get_config(self):
        return {**super().get_config(), "pool_shape": list(self.pool_shape)}


@keras.saving.register_keras_serializable(package="mrcnn")
class ImageROICrop(keras.layers.Layer):
    """Sample the input image on each ROI's mask grid.

    Call inputs: ``[boxes [K, 4] normalised, batch_index [K] int32, image [B, H, W, C]]``.
    Output: [K, crop_h, crop_w, C] float32, bilinear samples times ``scale`` (the molded image
    is mean-subtracted 0-255 data: 1/128 brings it near the unit range a convolution
    initialised for it expects), whose first and last rows and columns fall on the box's
    normalised corners (``tf.image.crop_and_resize``: the frame the
    detection targets crop the mask targets in, so sample (i, j) sees the pixel whose target
    is mask cell (i, j)).
    """

    def __init__(self, crop_shape, scale=1.0 / 128, **kwargs):
        super().__init__(**kwargs)
        self.crop_shape = tuple(int(v) for v in crop_shape)
        self.scale = float(scale)

    def call(self, inputs):
        boxes, batch_index, image = inputs
        crops = tf.image.crop_and_resize(tf.cast(image, tf.float32), boxes, batch_index,
                                         self.crop_shape, method="bilinear")
        return crops * self.scale

    def compute_output_shape(self, input_shape):
        return (None,) + self.crop_shape + (input_shape[2][-1],)

    def get_config(self):
        return {**super().get_config(), "crop_shape": list(self.crop_shape),
                "scale": self.scale}
