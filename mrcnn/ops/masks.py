"""Instance mask operations (NumPy): mini-masks and pasting predicted masks into images.

Masks are ``[H, W, N]`` bool, one channel per instance. Boxes are pixels ``(y1, x1, y2, x2)``
with (y2, x2) one past the last pixel.
"""

import numpy as np

from mrcnn.ops.image import is_colour, resize_array, to_rgb_uint8


def minimize_mask(bbox, mask, mini_shape):
    """Crop each instance to its box and resize to mini_shape -> [h, w, N] bool."""
    mini = np.zeros(tuple(mini_shape) + (mask.shape[-1],), dtype=bool)
    for i in range(mask.shape[-1]):
        y1, x1, y2, x2 = bbox[i][:4]
        crop = mask[y1:y2, x1:x2, i]
        if crop.size == 0:
            continue
        mini[:, :, i] = resize_array(crop.astype(np.float32), mini_shape) >= 0.5
    return mini


def expand_mask(bbox, mini_mask, image_shape, threshold=0.5, intensity=None, band=None,
                margin=10):
    """Paste small soft or binary masks [h, w, N] into their pixel boxes [N, 4] (y1, x1, y2, x2,
    y2/x2 exclusive) of an image-sized bool stack [H, W, N], binarised at ``threshold``.

    Inverse of :func:`minimize_mask`, and how detections' 28x28 masks reach the original
    image. Empty boxes give empty masks. The stack is filled instance by instance in an
    [N, H, W] array and returned as its [H, W, N] view (same values): a box is
    written into one contiguous plane instead of every N-th byte of an [H, W, N] array (100
    boxes of 400 px side: 1 ms instead of 30 ms of strided writes), and ``masks[..., i]`` reads one
    contiguous plane.

    With ``intensity`` (the image's [H, W] grey levels) and ``band`` = (low, high), the pixels
    of a box whose probability is in [low, high) are unsure: they belong to the mask when they
    lie on the object's side of :func:`otsu_threshold` over the box grown by ``margin`` pixels
    (the side most of the mask thresholded at ``threshold`` lies on, so bright and dark objects
    both work); probabilities >= high are in, < low out: :func:`follow_intensity`.
    """
    planes = np.zeros((mini_mask.shape[-1],) + tuple(image_shape[:2]), dtype=bool)
    for i in range(len(planes)):
        y1, x1, y2, x2 = (int(v) for v in bbox[i][:4])
        if y2 <= y1 or x2 <= x1:
            continue
        resized = resize_array(mini_mask[:, :, i].astype(np.float32), (y2 - y1, x2 - x1))
        inside = resized >= threshold
        if intensity is not None and band is not None:
            inside = follow_intensity(inside, resized >= band[1], resized >= band[0], intensity,
                                      (y1, x1, y2, x2), margin)
        planes[i, y1:y2, x1:x2] = inside
    return np.moveaxis(planes, 0, -1)


def grey_levels(image):
    """[H, W] float32 grey levels of an image [H, W], [H, W, 1] or [H, W, C] (the mean of its
    first three channels), or None for None or a colour image
    (:func:`mrcnn.ops.image.is_colour`: channels off their grey by more than
    STAIN_COLOUR_THRESHOLD on average), such as stained tissue, where the grey level mixes the
    stains. (On 80 stained DSB2018 training
    images, growing masks by the grey level, by any one channel or by the haematoxylin amount
    lowered the DSB score by 0.002-0.007 per image; docs/results.md.) Images that are not
    uint8 (16-bit, float) are judged and measured on their 8-bit view, the one ``detect`` molds
    (:func:`mrcnn.ops.image.to_rgb_uint8`)."""
    if image is None:
        return None
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = to_rgb_uint8(image)
    if image.ndim == 2:
        return image.astype(np.float32)
    if is_colour(image):
        return None
    return image[..., :3].astype(np.float32).mean(axis=-1)


def otsu_threshold(values, bins=256):
    """Otsu's threshold of ``values`` (any shape) by scikit-image's ``threshold_otsu`` over
    ``bins`` equal bins from min to max: the centre of the bin after which splitting maximises
    the between-class variance. Values above it form the upper class. None when all values
    are equal."""
    from skimage.filters import threshold_otsu   # imported on first use: 40 ms
    values = np.asarray(values, dtype=np.float64).ravel()
    if not values.max() > values.min():
        return None
    return float(threshold_otsu(values, nbins=bins))


def follow_intensity(inside, sure, possible, intensity, box, margin):
    """One detection's mask over its box where the image decides the unsure pixels.

    Args:
        inside: [h, w] bool, the mask thresholded as usual (it tells the object's side).
        sure: [h, w] bool, pixels in the mask whatever the image (probability >= the band's
            top); ``possible``: [h, w] bool, pixels that may be (probability >= its bottom).
        intensity: [H, W] grey levels of the image; box: its pixels (y1, x1, y2, x2) of the
            detection; margin: pixels the Otsu region extends beyond the box (clipped).

    Returns:
        [h, w] bool: ``sure`` plus the ``possible`` pixels on the object's side of the Otsu
        threshold of the grown box. The object's side is the upper one when a larger share of
        ``inside``'s pixels than of the box's other pixels lies above the threshold, else the
        lower one, so nuclei brighter (fluorescence) or darker (brightfield) than their
        surroundings both work. A mask that is empty or fills its box, a constant region, or a
        result that would be empty (the image may reshape a mask, not erase it) gives
        ``inside`` unchanged.
    """
    if not inside.any() or inside.all():
        return inside
    y1, x1, y2, x2 = box
    height, width = intensity.shape[:2]
    region = intensity[max(0, y1 - margin):min(height, y2 + margin),
                       max(0, x1 - margin):min(width, x2 + margin)]
    threshold = otsu_threshold(region)
    if threshold is None:
        return inside
    upper = intensity[y1:y2, x1:x2] > threshold
    objects = upper if upper[inside].mean() >= upper[~inside].mean() else ~upper
    decided = sure | (possible & objects)
    return decided if decided.any() else inside


def unmold_mask(mask, bbox, image_shape, threshold=0.5):
    """Paste one predicted soft mask [h, w] into an image-sized bool mask [H, W]."""
    return expand_mask(np.asarray(bbox)[None], np.asarray(mask)[..., None], image_shape,
                       threshold)[..., 0]


def uncovered_detections(bbox, masks, scores, max_covered, min_area=0):
    """The detections that higher-scored ones do not cover by more than ``max_covered``.

    In score order, a detection is dropped when more than ``max_covered`` of its mask's pixels
    lie in the masks of the higher-scored detections kept before it; a kept detection's mask
    then covers the later ones. (Mask NMS by intersection over the lower-scored mask, not IoU: a
    fragment of a neighbour or a duplicate half inside it is dropped however small it is.) With
    ``min_area``, a detection is also dropped when fewer than ``min_area`` of its pixels lie
    outside those masks (the pixels an instance-level score such as the DSB score would give it
    once overlaps are removed by score).

    Args:
        bbox: [N, 4] pixel boxes (y1, x1, y2, x2, y2/x2 exclusive) holding each mask's pixels.
        masks: [H, W, N] bool, image-sized.
        scores: [N].
        max_covered: a fraction in [0, 1]; None = no cover rule (only ``min_area``).
        min_area: pixels; 0 = no minimum.

    Returns:
        [K] int indices of the kept detections, in their input order. A detection with an
        empty mask is kept when ``min_area`` is 0 (nothing of it is covered).
    """
    scores = np.asarray(scores)
    claimed = np.zeros(masks.shape[:2], dtype=bool)
    keep = []
    for i in np.argsort(-scores, kind="stable"):
        y1, x1, y2, x2 = (int(v) for v in bbox[i][:4])
        own = masks[y1:y2, x1:x2, i]
        area = np.count_nonzero(own)
        window = claimed[y1:y2, x1:x2]
        covered = np.count_nonzero(own & window)
        if (max_covered is not None and area and covered > max_covered * area) \
                or area - covered < min_area:
            continue
        window |= own
        keep.append(i)
    return np.sort(np.array(keep, dtype=np.int64))
