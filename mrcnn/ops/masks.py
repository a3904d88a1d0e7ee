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


def expand_mask(bbox, mini_mask, image_shape):
    """Inverse of :func:`minimize_mask`: paste mini-masks back -> [H, W, N] bool."""
    mask = np.zeros(tuple(image_shape[:2]) + (mini_mask.shape[-1],), dtype=bool)
    for i in range(mask.shape[-1]):
        y1, x1, y2, x2 = bbox[i][:4]
        if y2 <= y1 or x2 <= x1:
            continue
        resized = resize_array(mini_mask[:, :, i].astype(np.float32), (y2 - y1, x2 - x1))
        mask[y1:y2, x1:x2, i] = resized >= 0.5
    return mask


def unmold_mask(mask, bbox, image_shape, threshold=0.5):
    """Paste one predicted soft mask [h, w] into an image-sized bool mask [H, W]."""
    y1, x1, y2, x2 = (int(v) for v in bbox)
    full = np.zeros(tuple(image_shape[:2]), dtype=bool)
    if y2 <= y1 or x2 <= x1:
        return full
    full[y1:y2, x1:x2] = resize_array(mask.astype(np.float32), (y2 - y1, x2 - x1)) >= threshold
    return full


def unmold_masks(masks, boxes, image_shape, threshold=0.5):
    """Paste soft masks [N, h, w] into one image-sized bool stack [H, W, N].

    Same result as stacking :func:`unmold_mask` per box, without N temporary full-size arrays
    (a dense 1000x1000 image with 400 detections would otherwise copy 400 MB twice).
    Boxes [N, 4] are pixels (y1, x1, y2, x2), y2/x2 exclusive; empty boxes give empty masks.
    """
    out = np.zeros(tuple(image_shape[:2]) + (len(boxes),), dtype=bool)
    for i, (mask, box) in enumerate(zip(masks, boxes)):
        y1, x1, y2, x2 = (int(v) for v in box)
        if y2 > y1 and x2 > x1:
            out[y1:y2, x1:x2, i] = resize_array(
                np.asarray(mask, np.float32), (y2 - y1, x2 - x1)) >= threshold
    return out
