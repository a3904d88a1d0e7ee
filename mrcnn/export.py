"""Export an inference model as a TensorFlow SavedModel that takes an image and returns
detections, runnable (TF Serving, ``tf.saved_model.load``) without this package.

    model = MaskRCNN("inference", config, "logs").load_weights(checkpoint)
    model.export("nucleus_savedmodel")            # or export_saved_model(model, path)

    served = tf.saved_model.load("nucleus_savedmodel")         # anywhere, no mrcnn needed
    out = served.serve(tf.constant(image_uint8))   # [H, W, C], C = 1 (grayscale), 3 or 4
    out["boxes"]      # [N, 4] int32 (y1, x1, y2, x2) pixels of the image, y2/x2 exclusive
    out["class_ids"]  # [N] int32
    out["scores"]     # [N] float32
    out["masks"]      # [N, H, W] bool

The signature does everything :meth:`mrcnn.inference.Detector.detect` does, in TensorFlow:
channel fixing, the config's IMAGE_NORMALIZATION, resizing and padding (the config's resize
mode: pad64, square or none), mean subtraction, image meta, anchors, the network, and unmolding
(boxes back to image pixels, 28x28 masks pasted into their boxes at
DETECTION_MASK_THRESHOLD, their unsure pixels decided by intensity with
DETECTION_MASK_INTENSITY_BAND, detections covered by higher-scored ones beyond
DETECTION_MAX_COVERED_FRACTION dropped). Resizing is
TensorFlow's bilinear instead of OpenCV's, so masks can differ from ``detect`` by a pixel at
object borders. With OBJECT_SIZE_TARGET set, ``detect`` may run an image a second time at
another scale, and with HALF_SCALE_PASS_MIN_AREA set it adds a pass at half the scale; the
SavedModel runs the first pass only.

``format="onnx"`` (``pip install -e ".[onnx]"``: tf2onnx, onnxruntime) writes the network
itself through Keras 3's ``model.export``: inputs ``input_image`` float32 [1, H, W, 3] (molded:
resized, padded to a multiple of 64, MEAN_PIXEL subtracted), ``input_image_meta`` [1, META] and
``input_anchors`` [1, A, 4] (normalised); outputs ``detections`` [1, D, 6] (normalised boxes of
the molded image, class, score) and ``mrcnn_mask`` [1, D, 28, 28, C] among the raw outputs.
Molding and unmolding stay outside (:meth:`mrcnn.inference.Detector.mold_inputs`,
``get_anchors``, ``unmold_detections``, or your own port of them): the whole image-to-masks
function converted by tf2onnx gives a graph onnxruntime rejects (an invalid Transpose).

LiteRT (TFLite) is refused: the converted graph needs two TensorFlow ops outside the LiteRT
builtin set, CropAndResize (ROIAlign) and InvertPermutation, so it runs only with the Flex
(select TensorFlow ops) delegate linked in; serve the SavedModel or the ONNX file instead.
"""

import logging

import keras
import numpy as np
import tensorflow as tf

from mrcnn.config import anchor_settings, inference_resize_mode
from mrcnn.ops.anchors import tf_generate_pyramid_anchors
from mrcnn.ops.image import (HAEMATOXYLIN_FROM_OD, HAEMATOXYLIN_MIN_RANGE, STAIN_COLOUR_THRESHOLD,
                             STATISTICS_MAX_PIXELS)

FORMATS = ("saved_model", "onnx")
_LITERT = ("its graph needs CropAndResize (ROIAlign) and InvertPermutation, which are not "
           "LiteRT builtin ops: it would run only with the Flex (select TensorFlow ops) delegate")
UNSUPPORTED = {"tflite": _LITERT, "litert": _LITERT}
log = logging.getLogger(__name__)


def _percentile(values, q):
    """NumPy's linear-interpolation percentile of a 1-D float tensor."""
    values = tf.sort(values)
    position = q / 100.0 * tf.cast(tf.size(values) - 1, tf.float32)
    low = tf.cast(tf.floor(position), tf.int32)
    high = tf.minimum(low + 1, tf.size(values) - 1)
    frac = position - tf.cast(low, tf.float32)
    return tf.gather(values, low) * (1.0 - frac) + tf.gather(values, high) * frac


def _stretch(values, sample, min_range):
    """TF twin of ``mrcnn.ops.image._stretch`` (float result, floored like the uint8 cast)."""
    low, high = _percentile(sample, 1.0), _percentile(sample, 99.8)
    return tf.floor(tf.clip_by_value((values - low) * (255.0 / tf.maximum(high - low, min_range)),
                                     0.0, 255.0))


def _statistics_step(image):
    """4 when the [H, W, C] image has more than STATISTICS_MAX_PIXELS pixels (statistics of
    every 4th row and column, as ``normalize_image``), else 1."""
    return tf.where(tf.size(image[..., 0]) > STATISTICS_MAX_PIXELS, 4, 1)


def _normalize_nuclei(image, stain=False):
    """TF twin of ``normalize_image(image, "nuclei" or, with stain, "nuclei_stain")`` on
    float [H, W, 3] -> float [H, W, 3]."""
    gray = tf.reduce_mean(image, axis=-1)
    step = _statistics_step(image)
    sample = gray[::step, ::step]
    flat = tf.reshape(sample, [-1])
    bright = _percentile(flat, 50.0) > 127.5

    def grey_path():
        return _stretch(tf.where(bright, 255.0 - gray, gray),
                        tf.where(bright, 255.0 - flat, flat), 1.0)
    if stain:
        colourful = is_colour_tf(image)
        weights = tf.constant(HAEMATOXYLIN_FROM_OD, tf.float32)

        def stain_path():
            haematoxylin = tf.tensordot(-tf.math.log((image + 1.0) / 256.0), weights, 1)
            h_sample = haematoxylin[::step, ::step]
            return _stretch(haematoxylin, tf.reshape(h_sample, [-1]), HAEMATOXYLIN_MIN_RANGE)
        out = tf.cond(tf.logical_and(bright, colourful), stain_path, grey_path)
    else:
        out = grey_path()
    return tf.repeat(out[..., None], 3, axis=-1)


# The IMAGE_NORMALIZATIONS that normalize_image_tf has a TensorFlow version of ("clahe",
# OpenCV's, has none).
EXPORTABLE_NORMALIZATIONS = (None, "stretch", "nuclei", "nuclei_stain")


def check_exportable_normalization(mode):
    """ValueError naming ``mode`` when :func:`normalize_image_tf` cannot do it, and what to
    do instead."""
    if mode not in EXPORTABLE_NORMALIZATIONS:
        raise ValueError(
            f"IMAGE_NORMALIZATION={mode!r} has no TensorFlow version in the exported graph "
            f"(it runs in NumPy/OpenCV; exportable: {EXPORTABLE_NORMALIZATIONS}); export a "
            f"model trained with one of those, or apply mrcnn.ops.image.normalize_image("
            f"image, {mode!r}) before serving and export with IMAGE_NORMALIZATION=None")


def normalize_image_tf(image, mode):
    """TF twin of :func:`mrcnn.ops.image.normalize_image` on float [H, W, 3] -> float
    [H, W, 3] (values 0-255, floored like the uint8 result); ValueError for a mode outside
    EXPORTABLE_NORMALIZATIONS."""
    check_exportable_normalization(mode)
    if mode == "stretch":
        step = _statistics_step(image)
        return _stretch(image, tf.reshape(image[::step, ::step], [-1]), 1.0)
    if mode in ("nuclei", "nuclei_stain"):
        return _normalize_nuclei(image, stain=mode == "nuclei_stain")
    return image


class _ServingGraph:
    """The molding / network / unmolding graph of one inference config."""

    def __init__(self, config, keras_model):
        self.keras_model = keras_model
        self.mode = inference_resize_mode(config.IMAGE_RESIZE_MODE)
        if self.mode not in ("pad64", "square", "none"):
            raise ValueError(f"cannot export IMAGE_RESIZE_MODE={self.mode!r}")
        if config.IMAGE_CHANNEL_COUNT != 3:
            raise ValueError("the export takes RGB/grayscale images; IMAGE_CHANNEL_COUNT must "
                             "be 3")
        self.min_dim = float(config.IMAGE_MIN_DIM or 0)
        self.max_dim = int(config.IMAGE_MAX_DIM or 0)
        self.min_scale = float(config.IMAGE_MIN_SCALE or 0)
        self.mean = tf.constant(np.asarray(config.MEAN_PIXEL, np.float32))
        self.num_classes = int(config.NUM_CLASSES)
        self.normalization = config.IMAGE_NORMALIZATION
        check_exportable_normalization(self.normalization)   # before anything is written
        self.threshold = float(config.DETECTION_MASK_THRESHOLD)
        covered = config.DETECTION_MAX_COVERED_FRACTION
        self.max_covered = None if covered is None else float(covered)
        self.min_area = int(config.DETECTION_MIN_MASK_AREA)
        band = config.DETECTION_MASK_INTENSITY_BAND
        self.band = None if band is None else (float(band[0]), float(band[1]))
        self.margin = int(config.DETECTION_MASK_INTENSITY_MARGIN)
        self.anchors = anchor_settings(config)

    def _scale(self, h, w):
        if self.mode == "none":
            return tf.constant(1.0)
        scale = tf.maximum(1.0, self.min_dim / tf.minimum(h, w)) if self.min_dim \
            else tf.constant(1.0)
        if self.min_scale:
            scale = tf.maximum(scale, self.min_scale)
        if self.mode == "square" and self.max_dim:
            too_big = tf.round(tf.maximum(h, w) * scale) > self.max_dim
            scale = tf.where(too_big, self.max_dim / tf.maximum(h, w), scale)
        return scale

    def __call__(self, image):
        image = tf.convert_to_tensor(image)
        image = tf.cond(tf.shape(image)[-1] == 1, lambda: tf.tile(image, [1, 1, 3]),
                        lambda: image[..., :3])
        image = tf.cast(image, tf.float32)
        grey = grey_image = None    # mrcnn.ops.masks.grey_levels of the input, for the band
        if self.band is not None:
            grey = tf.reduce_mean(image, axis=-1)
            grey_image = tf.logical_not(is_colour_tf(image))
        image = normalize_image_tf(image, self.normalization)
        shape = tf.shape(image)
        h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
        scale = self._scale(h, w)
        new_h = tf.cast(tf.round(h * scale), tf.int32)
        new_w = tf.cast(tf.round(w * scale), tf.int32)
        resized = tf.image.resize(image, [new_h, new_w], method="bilinear")
        resized = tf.clip_by_value(tf.round(resized), 0.0, 255.0)
        if self.mode == "square":
            pad_h, pad_w = self.max_dim - new_h, self.max_dim - new_w
        else:
            pad_h = tf.math.floormod(64 - tf.math.floormod(new_h, 64), 64)
            pad_w = tf.math.floormod(64 - tf.math.floormod(new_w, 64), 64)
        if self.mode == "none":
            pad_h = pad_w = tf.constant(0)
        top, left = pad_h // 2, pad_w // 2
        molded = tf.pad(resized, [[top, pad_h - top], [left, pad_w - left], [0, 0]])
        molded = molded - self.mean
        mh, mw = new_h + pad_h, new_w + pad_w
        window = tf.cast(tf.stack([top, left, top + new_h, left + new_w]), tf.float32)
        meta = tf.concat([[0.0, h, w, 3.0, tf.cast(mh, tf.float32), tf.cast(mw, tf.float32),
                           3.0], window, [scale], tf.zeros([self.num_classes])], axis=0)
        hw = tf.stack([mh, mw])
        anchors = tf_generate_pyramid_anchors(hw, self.anchors["scales"], self.anchors["ratios"],
                                              self.anchors["strides"],
                                              self.anchors["anchor_stride"],
                                              self.anchors["octave"])
        extent = tf.cast(tf.stack([mh - 1, mw - 1, mh - 1, mw - 1]), tf.float32)
        anchors = (anchors - tf.constant([0.0, 0.0, 1.0, 1.0])) / extent
        out = self.keras_model({"input_image": molded[None], "input_image_meta": meta[None],
                                "input_anchors": anchors[None]}, training=False)
        return self._unmold(out["detections"][0], out["mrcnn_mask"][0], h, w, window, extent,
                            grey, grey_image)

    def _unmold(self, detections, masks, h, w, window, extent, grey, grey_image):
        keep = tf.where(detections[:, 4] > 0)[:, 0]
        detections, masks = tf.gather(detections, keep), tf.gather(masks, keep)
        class_ids = tf.cast(detections[:, 4], tf.int32)
        wy1, wx1, wy2, wx2 = tf.unstack((window - tf.constant([0.0, 0.0, 1.0, 1.0])) / extent)
        boxes = (detections[:, :4] - tf.stack([wy1, wx1, wy1, wx1])) / \
            tf.stack([wy2 - wy1, wx2 - wx1, wy2 - wy1, wx2 - wx1])
        boxes = tf.cast(tf.round(boxes * tf.stack([h - 1, w - 1, h - 1, w - 1]) +
                                 tf.constant([0.0, 0.0, 1.0, 1.0])), tf.int32)
        valid = tf.where((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))[:, 0]
        boxes, class_ids = tf.gather(boxes, valid), tf.gather(class_ids, valid)
        scores = tf.gather(detections[:, 5], valid)
        small = tf.gather(tf.gather(masks, valid), class_ids, axis=-1, batch_dims=1)
        ih, iw = tf.cast(h, tf.int32), tf.cast(w, tf.int32)

        def paste(args):
            mask, box = args
            y1, x1, y2, x2 = box[0], box[1], box[2], box[3]
            resized = tf.image.resize(mask[..., None], [y2 - y1, x2 - x1], method="bilinear")
            inside = resized[..., 0] >= self.threshold
            if self.band is not None:
                sure = resized[..., 0] >= self.band[1]
                possible = resized[..., 0] >= self.band[0]
                inside = tf.cond(
                    grey_image,
                    lambda: follow_intensity_tf(inside, sure, possible, grey, box, self.margin),
                    lambda: inside)
            return tf.pad(inside, [[y1, ih - y2], [x1, iw - x2]])

        full = tf.map_fn(paste, (small, boxes),
                         fn_output_signature=tf.TensorSpec([None, None], tf.bool))
        full = tf.reshape(full, tf.stack([tf.shape(boxes)[0], ih, iw]))
        if self.max_covered is not None or self.min_area:
            keep = uncovered_detections_tf(full, scores, self.max_covered, self.min_area)
            boxes, class_ids = tf.gather(boxes, keep), tf.gather(class_ids, keep)
            scores, full = tf.gather(scores, keep), tf.gather(full, keep)
        return {"boxes": boxes, "class_ids": class_ids, "scores": scores, "masks": full}


def is_colour_tf(image):
    """TensorFlow twin of :func:`mrcnn.ops.masks.is_colour` for a float32 [H, W, 3] image."""
    step = _statistics_step(image)
    sample = image[::step, ::step]
    deviation = tf.reduce_mean(tf.abs(sample - tf.reduce_mean(sample, axis=-1, keepdims=True)))
    return deviation > STAIN_COLOUR_THRESHOLD


def otsu_threshold_tf(values, bins=256):
    """TensorFlow twin of :func:`mrcnn.ops.masks.otsu_threshold` for a non-constant 1-D
    tensor ``values``: the centre of the histogram bin after which splitting maximises the
    between-class variance (float64 scalar)."""
    values = tf.cast(values, tf.float64)
    low, high = tf.reduce_min(values), tf.reduce_max(values)
    counts = tf.cast(tf.histogram_fixed_width(values, tf.stack([low, high]), nbins=bins),
                     tf.float64)
    centres = low + (tf.range(bins, dtype=tf.float64) + 0.5) * (high - low) / bins
    w0 = tf.cumsum(counts)[:-1]
    w1 = tf.reduce_sum(counts) - w0
    sum0 = tf.cumsum(counts * centres)[:-1]
    both = w0 * w1 > 0
    mean0 = sum0 / tf.where(both, w0, 1.0)
    mean1 = (tf.reduce_sum(counts * centres) - sum0) / tf.where(both, w1, 1.0)
    between = tf.where(both, w0 * w1 * tf.square(mean0 - mean1), -1.0)
    return tf.gather(centres, tf.argmax(between))


def follow_intensity_tf(inside, sure, possible, grey, box, margin):
    """TensorFlow twin of :func:`mrcnn.ops.masks.follow_intensity`: ``inside``, ``sure`` and
    ``possible`` [h, w] bool over the pixel ``box`` [4] int32 of the image's ``grey`` [H, W]
    float32 levels; ``margin`` a Python int."""
    y1, x1, y2, x2 = box[0], box[1], box[2], box[3]
    height, width = tf.shape(grey)[0], tf.shape(grey)[1]
    region = grey[tf.maximum(0, y1 - margin):tf.minimum(height, y2 + margin),
                  tf.maximum(0, x1 - margin):tf.minimum(width, x2 + margin)]
    values = tf.reshape(region, [-1])
    varied = tf.reduce_max(values) > tf.reduce_min(values)
    area = tf.reduce_sum(tf.cast(inside, tf.float64))
    total = tf.cast(tf.size(inside), tf.float64)
    grow = varied & (area > 0) & (area < total)

    def grown():
        upper = grey[y1:y2, x1:x2] > tf.cast(otsu_threshold_tf(values), tf.float32)
        upper_in = tf.reduce_sum(tf.cast(upper & inside, tf.float64)) / area
        upper_out = tf.reduce_sum(tf.cast(upper & ~inside, tf.float64)) / (total - area)
        objects = tf.where(upper_in >= upper_out, upper, ~upper)
        decided = sure | (possible & objects)
        return tf.where(tf.reduce_any(decided), decided, inside)

    return tf.cond(grow, grown, lambda: inside)


def uncovered_detections_tf(masks, scores, max_covered, min_area=0):
    """TensorFlow twin of :func:`mrcnn.ops.masks.uncovered_detections` for the SavedModel.

    Args:
        masks: [N, H, W] bool, image-sized. scores: [N] float32. max_covered: a Python float,
        or None for no cover rule. min_area: a Python int, pixels (0 = no minimum).

    Returns:
        [K] int64 indices of the kept detections, ascending: in score order, a detection is
        dropped when more than ``max_covered`` of its pixels lie in the masks kept before it,
        or fewer than ``min_area`` outside them.
    """
    order = tf.argsort(scores, direction="DESCENDING", stable=True)
    count = tf.shape(masks)[0]

    def step(k, claimed, kept):
        i = order[k]
        own = masks[i]
        area = tf.reduce_sum(tf.cast(own, tf.float64))
        covered = tf.reduce_sum(tf.cast(own & claimed, tf.float64))
        keep = area - covered >= min_area
        if max_covered is not None:
            keep = keep & tf.logical_or(area == 0, covered <= max_covered * area)
        claimed = claimed | (own & keep)
        kept = tf.tensor_scatter_nd_update(kept, [[i]], [keep])
        return k + 1, claimed, kept

    _, _, kept = tf.while_loop(
        lambda k, claimed, kept: k < count, step,
        (tf.constant(0), tf.zeros(tf.shape(masks)[1:], tf.bool), tf.zeros([count], tf.bool)))
    return tf.where(kept)[:, 0]


def export_saved_model(model, path):
    """Write ``model`` (a MaskRCNN in inference mode) as a SavedModel with a ``serve``
    endpoint ``image uint8 [H, W, C] -> {boxes, class_ids, scores, masks}`` (see the module
    docstring). Returns ``path``."""
    if model.mode != "inference":
        raise ValueError("export an inference-mode MaskRCNN (build it with mode='inference' "
                         "and load the trained weights)")
    if model.config.OBJECT_SIZE_TARGET:
        log.warning("OBJECT_SIZE_TARGET is set, but the SavedModel detects in one pass at the "
                    "config's scale; detect()'s second pass at the objects' scale is not in it.")
    if model.config.HALF_SCALE_PASS_MIN_AREA is not None:
        log.warning("HALF_SCALE_PASS_MIN_AREA is set, but the SavedModel detects in one pass at "
                    "the config's scale; detect()'s half-scale pass for large objects is not "
                    "in it.")
    graph = _ServingGraph(model.config, model.keras_model)
    archive = keras.export.ExportArchive()
    archive.track(model.keras_model)
    archive.add_endpoint(
        "serve", graph,
        input_signature=[tf.TensorSpec([None, None, None], tf.uint8, name="image")])
    archive.write_out(str(path), verbose=False)
    return str(path)


def export_onnx(model, path):
    """Write the network of ``model`` (inference mode) as ONNX through Keras 3's
    ``model.export`` (needs tf2onnx); its inputs are the molded image, meta and anchors (see
    the module docstring). Returns ``path``."""
    if model.mode != "inference":
        raise ValueError("export an inference-mode MaskRCNN (build it with mode='inference' "
                         "and load the trained weights)")
    try:
        import tf2onnx  # noqa: F401  (Keras' ONNX export needs it)
    except ImportError as err:
        raise RuntimeError("ONNX export needs tf2onnx: pip install -e \".[onnx]\"") from err
    side = 64 * max(1, int(np.ceil(float(model.config.IMAGE_MIN_DIM or 64) / 64)))
    molded, metas, _ = model.detector.mold_inputs([np.zeros((side, side, 3), np.uint8)])
    model.detector.run(molded, metas)    # Keras exports a model only once it has been called
    model.keras_model.export(str(path), format="onnx", verbose=False)
    return str(path)


def export(model, path, format="saved_model"):
    """Export in ``format`` ("saved_model" or "onnx"); LiteRT raises an error naming the ops
    that stop it and what to do instead."""
    if format in UNSUPPORTED:
        raise ValueError(f"cannot export to {format}: {UNSUPPORTED[format]}. Export a "
                         "SavedModel (format='saved_model') or ONNX (format='onnx') instead.")
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; use one of {FORMATS}")
    return export_onnx(model, path) if format == "onnx" else export_saved_model(model, path)
