"""Instance mask operations (NumPy): mini-masks and pasting predicted masks into images.

Masks are ``[H, W, N]`` bool, one channel per instance. Boxes are pixels ``(y1, x1, y2, x2)``
with (y2, x2) one past the last pixel.
"""

import numpy as np

from mrcnn.ops.image import resize_array


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


def expand_mask(bbox, mini_mask, image_shape, threshold=0.5):
    """Paste small soft or binary masks [h, w, N] into their pixel boxes [N, 4] (y1, x1, y2, x2,
    y2/x2 exclusive) of an image-sized bool stack [H, W, N], binarised at ``threshold``.

    Inverse of :func:`minimize_mask`, and how detections' 28x28 masks reach the original
    image. Empty boxes give empty masks. The stack is filled instance by instance in an
    [N, H, W] array and returned as its [H, W, N] view (same shape and values): a box is
    written into one contiguous plane instead of every N-th byte of an [H, W, N] array (100
    boxes of 400 px side: 1 ms instead of 30 ms of writes), and ``masks[..., i]`` reads one
    contiguous plane.
    """
    planes = np.zeros((mini_mask.shape[-1],) + tuple(image_shape[:2]), dtype=bool)
    for i in range(len(planes)):
        y1, x1, y2, x2 = (int(v) for v in bbox[i][:4])
        if y2 <= y1 or x2 <= x1:
            continue
        resized = resize_array(mini_mask[:, :, i].astype(np.float32), (y2 - y1, x2 - x1))
        planes[i, y1:y2, x1:x2] = resized >= threshold
    return np.moveaxis(planes, 0, -1)


def unmold_mask(mask, bbox, image_shape, threshold=0.5):
    """Paste one predicted soft mask [h, w] into an image-sized bool mask [H, W]."""
    return expand_mask(np.asarray(bbox)[None], np.asarray(mask)[..., None], image_shape,
                       threshold)[..., 0]


def uncovered_detections(bbox, masks, scores, max_covered):
    """The detections that higher-scored ones do not cover by more than ``max_covered``.

    In score order, a detection is dropped when more than ``max_covered`` of its mask's pixels
    lie in the masks of the higher-scored detections kept before it; a kept detection's mask
    then covers the later ones. (Mask NMS by intersection over the lower-scored mask, not IoU: a
    fragment of a neighbour or a duplicate half inside it is dropped however small it is.)

    Args:
        bbox: [N, 4] pixel boxes (y1, x1, y2, x2, y2/x2 exclusive) holding each mask's pixels.
        masks: [H, W, N] bool, image-sized.
        scores: [N].
        max_covered: a fraction in [0, 1].

    Returns:
        [K] int indices of the kept detections, in their input order. A detection with an
        empty mask is kept (nothing of it is covered).
    """
    scores = np.asarray(scores)
    claimed = np.zeros(masks.shape[:2], dtype=bool)
    keep = []
    for i in np.argsort(-scores, kind="stable"):
        y1, x1, y2, x2 = (int(v) for v in bbox[i][:4])
        own = masks[y1:y2, x1:x2, i]
        area = np.count_nonzero(own)
        window = claimed[y1:y2, x1:x2]
        if area and np.count_nonzero(own & window) > max_covered * area:
            continue
        window |= own
        keep.append(i)
    return np.sort(np.array(keep, dtype=np.int64))
