"""DetectionLayer: refine classified ROIs into final, per-class NMS-filtered detections;
RefineBoxes: move each ROI to its refined box for another pass of the box head."""

import keras
import numpy as np
import tensorflow as tf

from mrcnn.ops.boxes import tf_apply_box_deltas, tf_clip_boxes
from mrcnn.ops.image import parse_image_meta_graph


def normalised_window(image_meta):
    """[B, 4] the image window (y1, x1, y2, x2) of each molded image, normalised."""
    meta = parse_image_meta_graph(image_meta)
    image_hw = meta["image_hw"]
    scale = tf.concat([image_hw, image_hw], axis=1) - 1.0
    return (meta["window"] - tf.constant([0.0, 0.0, 1.0, 1.0])) / scale


@keras.saving.register_keras_serializable(package="mrcnn")
class DetectionLayer(keras.layers.Layer):
    """Pick each ROI's best class, apply that class's deltas, clip, filter and run NMS.

    NMS is per class, done in one call by offsetting each class's boxes by 2 * class_id
    (normalised boxes lie in [0, 1], so classes never overlap).

    Call inputs:
        rois: [B, N, 4] normalised (zero rows are padding).
        mrcnn_class: [B, N, num_classes] probabilities.
        mrcnn_bbox: [B, N, num_classes, 4] deltas (divided by BBOX_STD_DEV).
        image_meta: [B, META] (window and molded image shape are read from it).

    Output:
        detections [B, max_instances, 6]: (y1, x1, y2, x2) normalised, class_id, score;
        sorted by score, zero-padded (class_id 0 marks padding).
    """

    def __init__(self, max_instances, min_confidence, nms_threshold, bbox_std_dev, **kwargs):
        super().__init__(**kwargs)
        self.max_instances = int(max_instances)
        self.min_confidence = float(min_confidence)
        self.nms_threshold = float(nms_threshold)
        self.bbox_std_dev = [float(v) for v in np.ravel(bbox_std_dev)]

    def _one_image(self, args):
        rois, probs, deltas, window = args
        class_ids = tf.argmax(probs, axis=1, output_type=tf.int32)
        scores = tf.gather(probs, class_ids, batch_dims=1)
        deltas = tf.gather(deltas, class_ids, batch_dims=1) * tf.constant(self.bbox_std_dev)
        boxes = tf_clip_boxes(tf_apply_box_deltas(rois, deltas), window)
        keep = ((class_ids > 0) & (scores >= self.min_confidence) &
                tf.reduce_any(tf.not_equal(rois, 0.0), axis=1) &
                (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
        keep = tf.where(keep)[:, 0]
        boxes, class_ids, scores = (tf.gather(v, keep) for v in (boxes, class_ids, scores))
        offsets = 2.0 * tf.cast(class_ids, tf.float32)[:, None]
        chosen = tf.image.non_max_suppression(boxes + offsets, scores, self.max_instances,
                                              self.nms_threshold)
        detections = tf.concat([tf.gather(boxes, chosen),
                                tf.cast(tf.gather(class_ids, chosen), tf.float32)[:, None],
                                tf.gather(scores, chosen)[:, None]], axis=1)
        return tf.pad(detections, [[0, self.max_instances - tf.shape(detections)[0]], [0, 0]])

    def call(self, inputs):
        rois, probs, deltas, image_meta = inputs
        window = normalised_window(image_meta)
        return tf.map_fn(self._one_image, (rois, probs, deltas, window),
                         fn_output_signature=tf.TensorSpec([self.max_instances, 6], tf.float32))

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.max_instances, 6)

    def get_config(self):
        return {**super().get_config(), "max_instances": self.max_instances,
                "min_confidence": self.min_confidence, "nms_threshold": self.nms_threshold,
                "bbox_std_dev": self.bbox_std_dev}


@keras.saving.register_keras_serializable(package="mrcnn")
class RefineBoxes(keras.layers.Layer):
    """Each ROI moved to the box its most probable foreground class's deltas give, clipped to
    the image window, so the box head can look again at a better-placed box (iterative box
    refinement at inference, as in Cascade R-CNN's test-time use of one head; Gidaris &
    Komodakis 2015). The foreground class is taken even where background is more probable:
    a ROI the head rejected gets its second look at the refined box.

    Call inputs:
        rois: [B, N, 4] normalised (zero rows are padding and stay zero).
        mrcnn_class: [B, N, num_classes] probabilities.
        mrcnn_bbox: [B, N, num_classes, 4] deltas (divided by BBOX_STD_DEV).
        image_meta: [B, META].

    Output:
        [B, N, 4] normalised refined boxes; a ROI whose refined box would be empty keeps its box.
    """

    def __init__(self, bbox_std_dev, **kwargs):
        super().__init__(**kwargs)
        self.bbox_std_dev = [float(v) for v in np.ravel(bbox_std_dev)]

    def call(self, inputs):
        rois, probs, deltas, image_meta = inputs
        class_ids = tf.argmax(probs[..., 1:], axis=-1, output_type=tf.int32) + 1
        deltas = tf.gather(deltas, class_ids, batch_dims=2) * tf.constant(self.bbox_std_dev)
        boxes = tf_clip_boxes(tf_apply_box_deltas(rois, deltas), normalised_window(image_meta))
        usable = ((boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1]) &
                  tf.reduce_any(tf.not_equal(rois, 0.0), axis=-1))
        return tf.where(usable[..., None], boxes, rois)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        return {**super().get_config(), "bbox_std_dev": self.bbox_std_dev}
