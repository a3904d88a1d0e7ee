"""Inference: mold images, run the inference graph in batches, unmold the detections.

    detector = Detector(config, keras_model)        # an inference-mode Mask R-CNN
    results = detector.detect([image, ...])         # rois, class_ids, scores, masks per image

Used by the :class:`mrcnn.model.MaskRCNN` facade and by the training-time monitoring.
"""

import logging

import numpy as np
import tensorflow as tf

from mrcnn.config import anchor_settings, inference_resize_mode
from mrcnn.data.dataset import median_diameter
from mrcnn.ops.anchors import pyramid_anchors
from mrcnn.ops.boxes import denorm_boxes, norm_boxes
from mrcnn.ops.image import (compose_image_meta, mold_image, normalize_image, resize_image,
                             rule_scale, to_rgb_uint8)
from mrcnn.ops.masks import expand_mask, grey_levels, uncovered_detections

log = logging.getLogger(__name__)

# Molded image shapes whose anchors Detector keeps (a folder of images has a few sizes).
ANCHOR_CACHE_SHAPES = 8


class Detector:
    """Batching, molding and unmolding around an inference-mode Keras model.

    Args:
        config: the inference Config (IMAGE_* fields, BATCH_SIZE, MEAN_PIXEL, NUM_CLASSES,
            anchors, DETECTION_MASK_THRESHOLD).
        keras_model: the model built by ``build_maskrcnn(config, "inference")``.
    """

    def __init__(self, config, keras_model):
        if config.HALF_SCALE_PASS_MIN_AREA is not None and \
                config.DETECTION_MAX_COVERED_FRACTION is None:
            raise ValueError("HALF_SCALE_PASS_MIN_AREA needs DETECTION_MAX_COVERED_FRACTION "
                             "set: it decides which of the two passes' overlapping detections "
                             "are kept.")
        self.config = config
        self.keras_model = keras_model
        self._predict = None
        self._anchors = {}
        self._warned_cap = False

    def mold_inputs(self, images, scales=None, normalized=False):
        """Resize and mean-subtract images for the network.

        Grayscale, RGBA, 16-bit and float images are brought to IMAGE_CHANNEL_COUNT uint8
        channels first (:func:`mrcnn.ops.image.to_rgb_uint8`). ``scales``: one resize factor
        per image (None: the config's rule) for the ``pad64`` mode (:meth:`detect`'s
        object-size pass); other modes raise ValueError when given one. ``normalized``: the
        images are already normalised (:meth:`normalize`, e.g. tiles of one normalised image),
        so IMAGE_NORMALIZATION is not applied again.

        Returns:
            molded_images [N, H, W, C] float32, image_metas [N, META], windows [N, 4] pixels.
            (All images must mold to one shape; :meth:`detect` groups them for you.)

        Raises:
            ValueError: an image whose channels cannot be brought to IMAGE_CHANNEL_COUNT.
        """
        config = self.config
        mode = inference_resize_mode(config.IMAGE_RESIZE_MODE)
        molded, metas, windows = [], [], []
        scales = [None] * len(images) if scales is None else scales
        if mode != "pad64" and any(scale is not None for scale in scales):
            raise ValueError(f"a resize scale per image needs the pad64 inference resize mode "
                             f"(IMAGE_RESIZE_MODE 'pad64' or 'crop'), not {mode!r}.")
        for image, fixed_scale in zip(images, scales):
            image = to_rgb_uint8(image, config.IMAGE_CHANNEL_COUNT)
            if image.shape[-1] != config.IMAGE_CHANNEL_COUNT:
                raise ValueError(f"image has {image.shape[-1]} channels; the config "
                                 f"expects {config.IMAGE_CHANNEL_COUNT}.")
            if not normalized:
                image = normalize_image(image, config.IMAGE_NORMALIZATION)
            out, window, scale, _, _ = resize_image(
                image, min_dim=config.IMAGE_MIN_DIM, min_scale=config.IMAGE_MIN_SCALE,
                max_dim=config.IMAGE_MAX_DIM, mode=mode, scale=fixed_scale)
            molded.append(mold_image(out, config.MEAN_PIXEL))
            metas.append(compose_image_meta(0, image.shape, out.shape, window, scale,
                                            np.zeros([config.NUM_CLASSES], dtype=np.int32)))
            windows.append(window)
        return np.stack(molded), np.stack(metas), np.array(windows)

    def get_anchors(self, image_shape):
        """Normalised anchors [A, 4] for a molded image shape (read-only; the last
        ANCHOR_CACHE_SHAPES shapes' anchors are kept: 262k anchors at 1024² took 40 ms of
        NumPy per call)."""
        key = tuple(int(v) for v in image_shape[:2])
        anchors = self._anchors.pop(key, None)
        if anchors is None:
            anchors = norm_boxes(pyramid_anchors(image_shape, **anchor_settings(self.config)),
                                 image_shape[:2]).astype(np.float32)
            anchors.setflags(write=False)
        self._anchors[key] = anchors                    # newest last
        while len(self._anchors) > ANCHOR_CACHE_SHAPES:
            self._anchors.pop(next(iter(self._anchors)))
        return anchors

    def run(self, molded, metas):
        """The inference graph on one batch of molded images -> dict of NumPy outputs.

        Traced once for every image size and batch size (height, width and batch are dynamic
        in its signature). TensorFlow 2.21 runs it as fast as a graph traced for one shape
        (nucleus model, float32, 57 DSB2018 val images of 7 sizes alternated: median ratio
        1.003), and a new image size no longer costs a 3-4 s trace (docs/speed.md).
        """
        if self._predict is None:
            model, config = self.keras_model, self.config

            @tf.function(jit_compile=False, input_signature=[
                tf.TensorSpec([None, None, None, config.IMAGE_CHANNEL_COUNT], tf.float32),
                tf.TensorSpec([None, config.IMAGE_META_SIZE], tf.float32),
                tf.TensorSpec([None, None, 4], tf.float32)])
            def predict(image, meta, anchors):
                return model({"input_image": image, "input_image_meta": meta,
                              "input_anchors": anchors}, training=False)
            self._predict = predict
        anchors = self.get_anchors(molded.shape[1:])
        anchors = np.broadcast_to(anchors, (len(molded),) + anchors.shape)
        out = self._predict(tf.constant(molded, tf.float32), tf.constant(metas, tf.float32),
                            tf.constant(anchors, tf.float32))
        return {k: v.numpy() for k, v in out.items()}

    def run_graph(self, image, scale=None):
        """Every raw output of the inference graph for one image, for inspection, at the
        config's scale or at ``scale`` (see :meth:`mold_inputs`).

        Returns:
            dict: the molded ``image``, ``window`` (pixels of the molded image), ``anchors``
            [A, 4] normalised, and the network outputs for this image: ``rpn_class`` [A, 2],
            ``rpn_bbox`` [A, 4], ``rpn_rois`` [N, 4] normalised, ``rois`` [N, 4] normalised
            (the boxes the box head's last pass classified: ``rpn_rois`` unless
            DETECTION_BOX_REFINEMENTS > 0), ``mrcnn_class`` [N, C] (with refinements, the mean
            over the passes), ``mrcnn_bbox`` [N, C, 4] (the last pass's, relative to ``rois``),
            ``detections`` [D, 6] (normalised y1, x1, y2, x2,
            class, score), ``mrcnn_mask`` [D, 28, 28, C].
        """
        molded, metas, windows = self.mold_inputs([image], [scale])
        size = self.config.BATCH_SIZE
        out = self.run(np.repeat(molded, size, axis=0), np.repeat(metas, size, axis=0))
        result = {k: v[0] for k, v in out.items()}
        result.update(image=molded[0], window=windows[0],
                      anchors=self.get_anchors(molded.shape[1:]))
        return result

    def unmold_detections(self, detections, mrcnn_mask, original_image_shape, image_shape,
                          window, mask_threshold=None, image=None, intensity=None):
        """One image's network output -> rois (pixels of the original image), class_ids,
        scores, masks [H, W, N] bool (mask probabilities > ``mask_threshold``, by default the
        config's DETECTION_MASK_THRESHOLD). With DETECTION_MASK_INTENSITY_BAND set and the
        original ``image`` given, the image decides the unsure pixels
        (:func:`mrcnn.ops.masks.expand_mask`); ``intensity``, the image's
        :func:`mrcnn.ops.masks.grey_levels` [H, W], may be given instead, so that unmolding one
        image at several thresholds measures them once (None with ``image`` None: plain masks).
        With DETECTION_MAX_COVERED_FRACTION set, the detections whose masks higher-scored ones
        cover by more than it are left out, and with DETECTION_MIN_MASK_AREA those with fewer
        pixels outside them (:func:`mrcnn.ops.masks.uncovered_detections`)."""
        if mask_threshold is None:
            mask_threshold = self.config.DETECTION_MASK_THRESHOLD
        n = int(np.sum(detections[:, 4] > 0))
        boxes = detections[:n, :4]
        class_ids = detections[:n, 4].astype(np.int32)
        scores = detections[:n, 5]
        masks = mrcnn_mask[np.arange(n), :, :, class_ids] if n else np.zeros((0, 1, 1))
        wy1, wx1, wy2, wx2 = norm_boxes(np.array([window]), image_shape[:2])[0]
        boxes = (boxes - np.array([wy1, wx1, wy1, wx1])) / \
            np.array([wy2 - wy1, wx2 - wx1, wy2 - wy1, wx2 - wx1])
        boxes = denorm_boxes(boxes, original_image_shape[:2])
        keep = np.flatnonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
        boxes, class_ids, scores, masks = boxes[keep], class_ids[keep], scores[keep], masks[keep]
        band = self.config.DETECTION_MASK_INTENSITY_BAND
        if band is None:
            intensity = None
        elif intensity is None:
            intensity = grey_levels(image)
        masks = expand_mask(boxes, np.moveaxis(masks, 0, -1), original_image_shape,
                            mask_threshold, intensity=intensity, band=band,
                            margin=self.config.DETECTION_MASK_INTENSITY_MARGIN)
        max_covered = self.config.DETECTION_MAX_COVERED_FRACTION
        min_area = self.config.DETECTION_MIN_MASK_AREA
        if max_covered is not None or min_area:
            keep = uncovered_detections(boxes, masks, scores, max_covered, min_area)
            if len(keep) < len(scores):
                boxes, class_ids, scores = boxes[keep], class_ids[keep], scores[keep]
                masks = masks[..., keep]
        return boxes, class_ids, scores, masks

    def detect(self, images, verbose=0):
        """Detect instances in any number of images of any sizes.

        Images are grouped by molded shape and run in batches of config.BATCH_SIZE (the last
        batch is padded); the graph is traced once for all shapes (:meth:`run`). With
        OBJECT_SIZE_TARGET set, an image whose detected objects call for another scale
        (:meth:`object_scale`) is detected again at that scale, and that result is returned.
        With HALF_SCALE_PASS_MIN_AREA set, every image is also detected at half the scale of
        its result and the large detections of that pass are pooled in
        (:func:`pool_detections`).

        Returns:
            one dict per image: rois [N, 4] (y1, x1, y2, x2) pixels of the original image,
            class_ids [N] int32, scores [N] float32, masks [H, W, N] bool.
        """
        config = self.config
        images = self.eight_bit(images)   # once, also for a second pass
        results = self.detect_at(images, [None] * len(images), verbose)
        again = {}   # image index -> the object-size pass's scale, where it ran
        if config.OBJECT_SIZE_TARGET:
            again = {i: self.object_scale(np.asarray(image).shape, result)
                     for i, (image, result) in enumerate(zip(images, results))}
            again = {i: scale for i, scale in again.items() if scale is not None}
            if again:
                redone = self.detect_at([images[i] for i in again], list(again.values()),
                                        verbose)
                for i, result in zip(again, redone):
                    results[i] = result
        if config.HALF_SCALE_PASS_MIN_AREA is not None:
            scales = [again.get(i) or self.default_scale(np.asarray(image).shape)
                      for i, image in enumerate(images)]
            halves = self.detect_at(images, [scale / 2 for scale in scales], verbose)
            results = [pool_detections(result, half, config.HALF_SCALE_PASS_MIN_AREA,
                                       config.DETECTION_MAX_COVERED_FRACTION,
                                       config.DETECTION_MIN_MASK_AREA)
                       for result, half in zip(results, halves)]
        return results

    def default_scale(self, image_shape):
        """The resize factor the config's rule gives an image of ``image_shape`` in the
        ``pad64`` inference mode (the one :meth:`object_scale` works in)."""
        config = self.config
        return rule_scale(image_shape[0], image_shape[1], config.IMAGE_MIN_DIM,
                          config.IMAGE_MIN_SCALE)

    def object_scale(self, image_shape, result):
        """The scale at which an image's median detected object would be OBJECT_SIZE_TARGET
        pixels wide (equivalent diameter of the masks in ``result``, a :meth:`detect` dict
        made at the config's scale, detections below DETECTION_MIN_CONFIDENCE left out), within
        OBJECT_SCALE_RANGE and not enlarging the long side past OBJECT_RESCALE_MAX_SIDE pixels
        (beyond the config's scale). None when the option is off, fewer than
        OBJECT_RESCALE_MIN_COUNT objects were found, the resize mode is not ``pad64``, or the
        scale is within OBJECT_RESCALE_TOLERANCE of the config's."""
        config = self.config
        if not config.OBJECT_SIZE_TARGET or \
                inference_resize_mode(config.IMAGE_RESIZE_MODE) != "pad64":
            return None
        masks = result["masks"][..., result["scores"] >= config.DETECTION_MIN_CONFIDENCE]
        if masks.shape[-1] < config.OBJECT_RESCALE_MIN_COUNT:
            return None
        diameter = max(median_diameter(masks.sum(axis=(0, 1))) or 1.0, 1.0)
        low, high = config.OBJECT_SCALE_RANGE
        scale = float(np.clip(config.OBJECT_SIZE_TARGET / diameter, low, high))
        current = self.default_scale(image_shape)
        # No larger than the long-side cap allows, unless the config's own scale already is.
        scale = min(scale, max(config.OBJECT_RESCALE_MAX_SIDE / max(image_shape[:2]), current))
        if abs(np.log(scale / current)) <= np.log1p(config.OBJECT_RESCALE_TOLERANCE):
            return None
        return scale

    def eight_bit(self, images):
        """``images`` with each 16-bit or float image brought to uint8 (at least 3 channels, as
        grey_levels reads them; molding takes the config's), so molding and grey levels share
        one conversion; uint8 images are returned as they are."""
        channels = max(self.config.IMAGE_CHANNEL_COUNT, 3)
        return [image if np.asarray(image).dtype == np.uint8 else to_rgb_uint8(image, channels)
                for image in images]

    def normalize(self, image):
        """``image`` as molding normalises it: uint8 [H, W, IMAGE_CHANNEL_COUNT] after
        IMAGE_NORMALIZATION. Tiles cut from it (:mod:`mrcnn.tiling`) and detected with
        ``normalized=True`` share the whole image's intensity stretch; a tile normalised on
        its own would stretch the noise of an empty tile to full contrast."""
        image = to_rgb_uint8(image, self.config.IMAGE_CHANNEL_COUNT)
        return normalize_image(image, self.config.IMAGE_NORMALIZATION)

    def detect_at(self, images, scales, verbose=0, normalized=False):
        """:meth:`detect`'s one pass: images at ``scales``, one resize factor per image (None:
        the config's rule; a number needs the ``pad64`` inference resize mode, which ``crop``
        training configs use). ``normalized``: see :meth:`mold_inputs`. Returns
        :meth:`detect`'s dicts. Logs a warning (once per Detector) when an image's detections
        reach DETECTION_MAX_INSTANCES, where objects beyond the cap are lost."""
        results = [None] * len(images)
        images = self.eight_bit(images)
        molded = [self.mold_inputs([image], [scale], normalized)
                  for image, scale in zip(images, scales)]
        groups = {}
        for i, (m, _, _) in enumerate(molded):
            groups.setdefault(m.shape[1:], []).append(i)
        size = self.config.BATCH_SIZE
        for indices in groups.values():
            for start in range(0, len(indices), size):
                chunk = indices[start:start + size]
                padded = chunk + [chunk[-1]] * (size - len(chunk))
                out = self.run(np.concatenate([molded[i][0] for i in padded]),
                               np.concatenate([molded[i][1] for i in padded]))
                for j, i in enumerate(chunk):
                    self._warn_at_cap(out["detections"][j], np.asarray(images[i]).shape)
                    rois, class_ids, scores, masks = self.unmold_detections(
                        out["detections"][j], out["mrcnn_mask"][j], np.asarray(images[i]).shape,
                        molded[i][0].shape[1:], molded[i][2][0], image=images[i])
                    results[i] = {"rois": rois, "class_ids": class_ids, "scores": scores,
                                  "masks": masks}
                    if verbose:
                        log.info("image %d: %d detections", i, len(class_ids))
        return results

    def _warn_at_cap(self, detections, image_shape):
        """Warn once when one image's detections [N, 6] fill DETECTION_MAX_INSTANCES."""
        cap = self.config.DETECTION_MAX_INSTANCES
        if self._warned_cap or int(np.sum(detections[:, 4] > 0)) < cap:
            return
        self._warned_cap = True
        log.warning("an image of %dx%d pixels gave DETECTION_MAX_INSTANCES = %d detections, "
                    "so objects beyond the cap were left out; predict large images in tiles "
                    "(mrcnn.tiling.predict_tiled, `train.py predict --tile`) or raise "
                    "DETECTION_MAX_INSTANCES", image_shape[0], image_shape[1], cap)


def pool_detections(first, second, min_area, max_covered, min_mask_area=0):
    """One image's detections from two passes in one: all of ``first``'s, and those of
    ``second`` whose masks hold at least ``min_area`` pixels, kept by
    :func:`mrcnn.ops.masks.uncovered_detections` (``max_covered``, ``min_mask_area``) in score
    order, so a detection more than ``max_covered`` inside higher-scored ones of either pass is
    dropped.

    Args:
        first, second: :meth:`Detector.detect` dicts of the same image: rois [N, 4] pixels of
            the original image, class_ids [N], scores [N], masks [H, W, N] bool.
        min_area: pixels of the original image.

    Returns:
        a :meth:`Detector.detect` dict, detections in descending score order.
    """
    large = np.count_nonzero(second["masks"], axis=(0, 1)) >= min_area
    rois = np.concatenate([first["rois"], second["rois"][large]]).reshape(-1, 4)
    class_ids = np.concatenate([first["class_ids"], second["class_ids"][large]])
    scores = np.concatenate([first["scores"], second["scores"][large]])
    masks = np.concatenate([first["masks"], second["masks"][..., large]], axis=-1)
    keep = uncovered_detections(rois, masks, scores, max_covered, min_mask_area)
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    return {"rois": rois[keep], "class_ids": class_ids[keep], "scores": scores[keep],
            "masks": masks[..., keep]}
