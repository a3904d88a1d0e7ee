"""Test-time augmentation: detect on flipped copies of an image, map the detections back and
fuse them by voting.

Nuclei have no preferred orientation, so a model should find the same objects in a flipped
image. Detections that only one view finds are mostly false positives, and averaging the
masks of the views that agree smooths their borders. The cost is one detection per view.

Boxes are pixels in the original image, ``(y1, x1, y2, x2)`` with y2/x2 exclusive.
"""

import numpy as np

from mrcnn.ops.boxes import compute_overlaps, extract_bboxes

# name -> (flip rows, flip columns)
FLIPS = {"none": (False, False), "h": (False, True), "v": (True, False), "hv": (True, True)}
DEFAULT_VIEWS = ("none", "h", "v", "hv")


def flip(array, vertical, horizontal):
    """Flip the first two axes of ``array`` (an image [H, W, ...] or masks [H, W, N])."""
    if vertical:
        array = array[::-1]
    if horizontal:
        array = array[:, ::-1]
    return np.ascontiguousarray(array)


def unflip_result(result, vertical, horizontal):
    """Map one view's detection dict (rois, class_ids, scores, masks [H, W, N]) back to the
    original image: the flips are their own inverses."""
    masks = flip(np.asarray(result["masks"]), vertical, horizontal)
    rois = np.asarray(result["rois"]).reshape(-1, 4).copy()
    h, w = masks.shape[:2]
    if vertical:
        rois[:, [0, 2]] = h - rois[:, [2, 0]]
    if horizontal:
        rois[:, [1, 3]] = w - rois[:, [3, 1]]
    return dict(result, rois=rois, masks=masks)


def _mask_iou(mask_a, box_a, mask_b, box_b):
    """IoU of two full-size boolean masks, computed inside the union of their boxes."""
    y1, x1 = min(box_a[0], box_b[0]), min(box_a[1], box_b[1])
    y2, x2 = max(box_a[2], box_b[2]), max(box_a[3], box_b[3])
    a, b = mask_a[y1:y2, x1:x2], mask_b[y1:y2, x1:x2]
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def fuse_detections(views, min_votes=None, iou_threshold=0.5):
    """Fuse detections of the same image made on several views.

    Greedy, highest score first: a detection collects from every other view the unclaimed
    detection of the same class with the highest mask IoU (> ``iou_threshold``). A group found
    by at least ``min_votes`` views is kept; its mask is the pixels that at least half of its
    members cover, its score the sum of its members' scores divided by the number of views
    (a view that missed the object counts as score 0).

    Args:
        views: list of V detection dicts in the original image frame: rois [N, 4] pixels,
            class_ids [N], scores [N], masks [H, W, N] bool.
        min_votes: views that must agree (default: half of them, rounded up).
        iou_threshold: mask IoU above which two detections are the same object.

    Returns:
        one dict like a view's, sorted by score (descending).
    """
    num_views = len(views)
    if num_views == 0:
        raise ValueError("fuse_detections needs at least one view")
    min_votes = int(np.ceil(num_views / 2)) if min_votes is None else int(min_votes)
    shape = np.asarray(views[0]["masks"]).shape[:2]
    masks, boxes, scores, classes, view_of = [], [], [], [], []
    for v, r in enumerate(views):
        m = np.asarray(r["masks"], dtype=bool).reshape(shape + (-1,))
        boxes.append(extract_bboxes(m))
        masks += [m[..., i] for i in range(m.shape[-1])]   # views, not copies
        scores += [float(s) for s in r["scores"]]
        classes += [int(c) for c in r["class_ids"]]
        view_of += [v] * m.shape[-1]
    empty = {"rois": np.zeros((0, 4), np.int32), "class_ids": np.zeros([0], np.int32),
             "scores": np.zeros([0], np.float32), "masks": np.zeros(shape + (0,), bool)}
    if not masks:
        return empty
    boxes = np.concatenate(boxes)
    scores, classes, view_of = np.array(scores), np.array(classes), np.array(view_of)
    claimed = np.zeros(len(masks), bool)
    fused = []
    for i in np.argsort(-scores, kind="stable"):
        if claimed[i]:
            continue
        claimed[i] = True
        members = [i]
        for v in range(num_views):
            if v == view_of[i]:
                continue
            candidates = np.flatnonzero((view_of == v) & ~claimed & (classes == classes[i]))
            candidates = candidates[compute_overlaps(boxes[i], boxes[candidates])[0] > 0]
            if not len(candidates):
                continue
            ious = [_mask_iou(masks[i], boxes[i], masks[j], boxes[j]) for j in candidates]
            best = int(np.argmax(ious))
            if ious[best] > iou_threshold:
                members.append(candidates[best])
                claimed[candidates[best]] = True
        if len(members) < min_votes:
            continue
        y1, x1 = boxes[members, 0].min(), boxes[members, 1].min()
        y2, x2 = boxes[members, 2].max(), boxes[members, 3].max()
        votes = np.sum([masks[j][y1:y2, x1:x2] for j in members], axis=0)
        crop = votes * 2 >= len(members)          # at least half of the members
        if crop.any():
            fused.append((scores[members].sum() / num_views, classes[i], (y1, x1, y2, x2), crop))
    if not fused:
        return empty
    fused.sort(key=lambda t: -t[0])
    out_masks = np.zeros(shape + (len(fused),), bool)
    for k, (_, _, (y1, x1, y2, x2), crop) in enumerate(fused):
        out_masks[y1:y2, x1:x2, k] = crop
    return {"rois": extract_bboxes(out_masks),
            "class_ids": np.array([t[1] for t in fused], np.int32),
            "scores": np.array([t[0] for t in fused], np.float32),
            "masks": out_masks}


def detect_with_flips(detect_fn, image, views=DEFAULT_VIEWS, min_votes=None,
                      iou_threshold=0.5):
    """Detect on flipped copies of ``image`` and fuse (see :func:`fuse_detections`).

    Args:
        detect_fn: ``detect_fn(list of images) -> list of detection dicts``, e.g.
            ``MaskRCNN.detect``; it receives all views in one call so they batch together.
        image: [H, W, C] array.
        views: names from :data:`FLIPS`.
    """
    unknown = [v for v in views if v not in FLIPS]
    if unknown:
        raise ValueError(f"unknown test-time views {unknown}; choose from {sorted(FLIPS)}")
    image = np.asarray(image)
    results = detect_fn([flip(image, *FLIPS[v]) for v in views])
    return fuse_detections([unflip_result(r, *FLIPS[v]) for r, v in zip(results, views)],
                           min_votes=min_votes, iou_threshold=iou_threshold)
