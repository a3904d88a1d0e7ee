"""Copy-paste augmentation for crops (Ghiasi et al., "Simple Copy-Paste", CVPR 2021), in a
form kept realistic for nuclei: whole objects of another window of the same image are pasted
into a crop's free space, each with a thin rim of its own surroundings, never over an object.

The crop and the source window come from the same image at the same scale, so a pasted object
has the stain, focus and illumination of its new neighbours; only free space receives objects,
so no ground-truth object is hidden or cut. Sparse crops (a few nuclei in background) gain the
most objects, dense ones hardly any.
"""

import numpy as np

from mrcnn.ops.boxes import instance_planes


def _grow(mask, margin):
    """[h, w] bool grown by ``margin`` pixels (a (2 margin + 1)-pixel square), same shape."""
    if margin <= 0 or not mask.any():
        return mask
    import cv2
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def paste_objects(image, mask, class_ids, source_image, source_mask, source_class_ids,
                  margin=2, rng=None):
    """Paste the whole objects of a source window into the free space of a crop.

    Objects of the source are taken in random order. One is pasted when it does not touch the
    source window's border (a cut object would teach cut outlines) and its footprint, the
    object grown by ``margin`` pixels less the source's other objects, overlaps neither the
    crop's objects grown by ``margin`` nor any footprint pasted before it; the crop's pixels in
    the footprint are replaced by the source's (so the pasted object keeps its own rim of
    background, and no unlabelled piece of a source neighbour comes along) and its mask is
    added at the same position.

    Args:
        image: [H, W, C] crop (not modified); mask: [H, W, N] bool; class_ids: [N].
        source_image: [H, W, C] another window of the same size, same scale; source_mask:
            [H, W, M] bool; source_class_ids: [M].
        margin: pixels of the source's surroundings pasted around each object.
        rng: numpy RandomState for the order.

    Returns:
        image [H, W, C] (a new array), mask [H, W, N + K] bool, class_ids [N + K]: the crop's
        objects unchanged, then the K pasted ones.
    """
    rng = rng if rng is not None else np.random
    if image.shape[:2] != source_image.shape[:2] or mask.shape[:2] != source_mask.shape[:2]:
        raise ValueError(f"paste_objects: crop {image.shape[:2]} and source "
                         f"{source_image.shape[:2]} differ in size")
    image = np.array(image, copy=True)
    height, width = image.shape[:2]
    # The crop's objects with a margin of their own: a pasted rim never replaces the pixels
    # just outside an object (its blurred edge); the source's objects, whose pixels a rim
    # must not bring along unlabelled.
    occupied = _grow(instance_planes(mask).any(axis=0), margin)
    planes = instance_planes(source_mask)                    # [M, H, W]
    source_objects = planes.any(axis=0)
    rows_hit, cols_hit = planes.any(axis=2), planes.any(axis=1)        # [M, H], [M, W]
    pasted, pasted_ids = [], []
    for j in rng.permutation(source_mask.shape[-1]):
        rows, cols = np.flatnonzero(rows_hit[j]), np.flatnonzero(cols_hit[j])
        if not len(rows) or rows[0] == 0 or cols[0] == 0 or rows[-1] == height - 1 \
                or cols[-1] == width - 1:
            continue                # empty, or cut by the source window's border
        y1, y2 = max(0, rows[0] - margin), min(height, rows[-1] + 1 + margin)
        x1, x2 = max(0, cols[0] - margin), min(width, cols[-1] + 1 + margin)
        local = planes[j, y1:y2, x1:x2]
        footprint = _grow(local, margin) & (local | ~source_objects[y1:y2, x1:x2])
        if (footprint & occupied[y1:y2, x1:x2]).any():
            continue
        image[y1:y2, x1:x2][footprint] = source_image[y1:y2, x1:x2][footprint]
        occupied[y1:y2, x1:x2] |= footprint
        pasted.append((y1, x1, local))
        pasted_ids.append(source_class_ids[j])
    if not pasted:
        return image, mask, np.asarray(class_ids, np.int32)
    added = np.zeros((height, width, len(pasted)), bool)
    for k, (y1, x1, local) in enumerate(pasted):
        added[y1:y1 + local.shape[0], x1:x1 + local.shape[1], k] = local
    mask = np.concatenate([mask.astype(bool, copy=False), added], axis=-1)
    class_ids = np.concatenate([np.asarray(class_ids, np.int32),
                                np.asarray(pasted_ids, np.int32)])
    return image, mask, class_ids
