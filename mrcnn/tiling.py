"""Predict on large images tile by tile: bounded memory and no cap on the object count.

A Mask R-CNN returns at most DETECTION_MAX_INSTANCES objects per call (400 for nuclei), and a
microscope field of 2048 x 2048 pixels, scaled x2 for the network, holds more nuclei than that
and needs gigabytes of activations. :func:`predict_tiled` cuts the image into overlapping
tiles, predicts each, and keeps every object from the one tile whose *core* holds the centre
of its box. The cores split the image without gaps or overlaps, and each core lies at least
half the overlap inside its tile, so an object up to ``overlap`` pixels across is whole in the
tile that keeps it, and an object cut by a tile's edge has its centre outside that tile's core.
Objects found in two tiles near a core boundary (their boxes differ by a pixel or two) are
resolved as overlaps are in a label image: the higher score keeps the shared pixels, and an
object left with less than ``1 - max_covered`` of its pixels is dropped.

    from mrcnn.tiling import predict_tiled
    result = predict_tiled(model, image, tile=1024, overlap=128)   # a MaskRCNN or predict(image)
    result["labels"]    # [H, W] label image, 0 = background, label k has result["scores"][k - 1]

All coordinates are pixels of the original image; boxes are (y1, x1, y2, x2), y2/x2 exclusive.
"""

import numpy as np

from mrcnn.config import inference_resize_mode
from mrcnn.ops.boxes import extract_bboxes
from mrcnn.tta import detect_with_flips

# Objects whose box centre lies this many pixels outside a tile's core are still taken from that
# tile, so that an object whose two detections' centres fall on either side of a core boundary
# is not lost; the duplicate this may keep is removed as an overlap.
CORE_MARGIN = 4


def tile_spans(length, tile, overlap):
    """Tiles along one axis of ``length`` pixels: as few as cover it with tiles of at most
    ``tile`` pixels overlapping by at least ``overlap``, all of one size, evenly spaced.

    Returns:
        list of (start, stop, core_start, core_stop): the tile is [start, stop), its core
        [core_start, core_stop); the cores cover [0, length) without overlapping, and a core's
        inner ends lie at the middle of the tile's overlap with its neighbour.

    Raises:
        ValueError: ``tile`` not larger than ``overlap``, or a negative overlap.
    """
    if overlap < 0 or tile <= overlap:
        raise ValueError(f"tile {tile} must be larger than the overlap {overlap} (>= 0)")
    if length <= tile:
        return [(0, length, 0, length)]
    count = int(np.ceil((length - overlap) / (tile - overlap)))
    size = int(np.ceil((length + (count - 1) * overlap) / count))
    starts = [int(round(i * (length - size) / (count - 1))) for i in range(count)]
    bounds = [0] + [(starts[i] + size + starts[i + 1]) // 2 for i in range(count - 1)] + [length]
    return [(start, start + size, bounds[i], bounds[i + 1]) for i, start in enumerate(starts)]


def _tile_predictor(model, image, tta):
    """``predict(y0, y1, x0, x1) -> result dict`` for the tile image[y0:y1, x0:x1].

    A MaskRCNN detects every tile at the whole image's scale (``Detector.default_scale``) on
    tiles of the whole image normalised once (``Detector.normalize``), so that tiles look to
    the network as the image would; a callable gets the tiles as they are."""
    if not hasattr(model, "detect"):
        return lambda y0, y1, x0, x1: model(image[y0:y1, x0:x1])
    if model.mode != "inference":
        raise ValueError("predict_tiled needs a MaskRCNN created in inference mode")
    detector = model.detector
    normalized = detector.normalize(detector.eight_bit([image])[0])
    pad64 = inference_resize_mode(detector.config.IMAGE_RESIZE_MODE) == "pad64"
    scale = detector.default_scale(image.shape) if pad64 else None

    def detect(tiles):
        return detector.detect_at(tiles, [scale] * len(tiles), normalized=True)

    def predict(y0, y1, x0, x1):
        tile = normalized[y0:y1, x0:x1]
        return detect_with_flips(detect, tile) if tta else detect([tile])[0]
    return predict


def _whole_image(model, image, tta):
    """One call on the whole image, exactly as without tiling."""
    if hasattr(model, "detect"):
        return detect_with_flips(model.detect, image) if tta else model.detect([image])[0]
    return model(image)


def predict_tiled(model, image, tile=1024, overlap=128, max_covered=None, tta=False):
    """Predict ``image`` tile by tile and join the objects into one label image.

    Args:
        model: a MaskRCNN in inference mode, or ``predict(image) -> {"masks": [h, w, N] bool,
            "scores": [N]}`` (optionally "class_ids" [N]) for an image [h, w, C].
        image: [H, W] or [H, W, C], any dtype the model takes.
        tile: the largest tile side, pixels of ``image``. An image no larger than it on both
            sides is predicted whole, and its labels are :func:`mrcnn.predict.label_image`'s
            of that one call (nothing dropped as covered).
        overlap: pixels shared by neighbouring tiles; objects up to this size across are never
            cut (default 128: nuclei are far smaller at DSB2018 magnifications).
        max_covered: an object covered by higher-scored ones beyond this fraction of its
            pixels is dropped (a duplicate from the neighbouring tile, or a fragment); None:
            a MaskRCNN's DETECTION_MAX_COVERED_FRACTION when it has one (so tiles drop what
            one call would), else 0.5.
        tta: a MaskRCNN detects each tile on its 4 flips (:func:`mrcnn.tta.detect_with_flips`).

    A MaskRCNN detects the tiles at the scale its config gives the whole image, on the whole
    image's normalisation (IMAGE_NORMALIZATION); OBJECT_SIZE_TARGET's second pass at another
    scale and HALF_SCALE_PASS_MIN_AREA's pass at half the scale are not made for tiled images.

    Returns:
        dict: labels [H, W] uint16 (uint32 beyond 65535 objects), 0 = background, label k the
        k-th highest score; scores [K] float32, class_ids [K] int32 and rois [K, 4] (the
        object's box before overlaps were removed, pixels) of labels 1..K; tiles (the number of
        predict calls).
    """
    if not hasattr(model, "detect"):
        if not callable(model):
            raise TypeError(f"{model!r} is neither a MaskRCNN nor a predict(image) callable")
        if tta:
            raise ValueError("test-time flips (tta) need a MaskRCNN, not a predict callable")
    image = np.asarray(image)
    height, width = image.shape[:2]
    candidates = []   # (score, class_id, y, x, mask cropped to its box)
    spans = [(ys, xs) for ys in tile_spans(height, tile, overlap)
             for xs in tile_spans(width, tile, overlap)]
    predict = _tile_predictor(model, image, tta) if len(spans) > 1 else \
        lambda y0, y1, x0, x1: _whole_image(model, image, tta)
    for (y0, y1, core_y0, core_y1), (x0, x1, core_x0, core_x1) in spans:
        result = predict(y0, y1, x0, x1)
        masks = np.asarray(result["masks"], dtype=bool)
        scores = np.asarray(result["scores"], dtype=np.float32).reshape(-1)
        class_ids = np.asarray(result.get("class_ids", np.ones(len(scores))), np.int32)
        for i, (by1, bx1, by2, bx2) in enumerate(extract_bboxes(masks)):
            if by2 <= by1:
                continue
            centre_y, centre_x = y0 + (by1 + by2) / 2, x0 + (bx1 + bx2) / 2
            if (core_y0 - CORE_MARGIN <= centre_y < core_y1 + CORE_MARGIN
                    and core_x0 - CORE_MARGIN <= centre_x < core_x1 + CORE_MARGIN):
                candidates.append((scores[i], class_ids[i], y0 + by1, x0 + bx1,
                                   masks[by1:by2, bx1:bx2, i].copy()))
    if max_covered is None:
        config = getattr(model, "config", None)
        max_covered = getattr(config, "DETECTION_MAX_COVERED_FRACTION", None)
        max_covered = 0.5 if max_covered is None else max_covered
    # One tile has no neighbour to duplicate its objects: keep whatever is not fully covered.
    return _join(candidates, (height, width), max_covered if len(spans) > 1 else 1.0,
                 len(spans))


def _join(candidates, shape, max_covered, tiles):
    """Paint the candidates into one label image, highest score first."""
    order = sorted(range(len(candidates)), key=lambda k: -candidates[k][0])
    labels = np.zeros(shape, np.uint32)
    kept = []
    for k in order:
        _, _, y, x, mask = candidates[k]
        region = labels[y:y + mask.shape[0], x:x + mask.shape[1]]
        free = mask & (region == 0)
        if free.sum() == 0 or free.sum() < (1.0 - max_covered) * mask.sum():
            continue
        kept.append(k)
        region[free] = len(kept)
    if len(kept) <= np.iinfo(np.uint16).max:
        labels = labels.astype(np.uint16)
    picked = [candidates[k] for k in kept]
    return {"labels": labels,
            "scores": np.array([c[0] for c in picked], np.float32),
            "class_ids": np.array([c[1] for c in picked], np.int32),
            "rois": np.array([[c[2], c[3], c[2] + c[4].shape[0], c[3] + c[4].shape[1]]
                              for c in picked], np.int32).reshape(-1, 4),
            "tiles": tiles}


def label_masks(labels):
    """A label image [H, W] (0 = background) -> masks [H, W, K] bool of labels 1..K."""
    labels = np.asarray(labels)
    ids = np.arange(1, int(labels.max(initial=0)) + 1, dtype=labels.dtype)
    return labels[..., None] == ids


def result_masks(result):
    """(masks [H, W, N] bool, scores [N]) of a prediction dict: its "masks", or the masks of
    its label image (:func:`predict_tiled`), whose label k has score ``scores[k - 1]``."""
    if "labels" in result:
        return label_masks(result["labels"]), np.asarray(result["scores"])
    return result["masks"], np.asarray(result["scores"])
