"""RPN training targets (NumPy): which anchors are positive/negative and their deltas."""

import numpy as np

from mrcnn.ops.anchors import AnchorGrid
from mrcnn.ops.boxes import box_refinement, compute_overlaps, touching_boxes


def build_rpn_targets(anchors, gt_class_ids, gt_boxes, anchors_per_image, rpn_bbox_std_dev,
                      rng=None, positive_iou=0.7, negative_iou=0.3):
    """Label anchors and compute the deltas of positive ones.

    An anchor is positive with IoU >= ``positive_iou`` to some box, or when it is the best
    anchor of a box; negative with IoU < ``negative_iou`` (and not touching a crowd box, class
    id < 0); otherwise neutral.
    Positives are subsampled to half of ``anchors_per_image``, negatives fill the rest.

    Args:
        anchors: [A, 4] pixels, or an :class:`~mrcnn.ops.anchors.AnchorGrid` (its anchors;
            the same result, found from the boxes' grid positions instead of all A anchors:
            about 1 instead of 4 ms per 256 px nucleus crop).
        gt_class_ids: [G]. gt_boxes: [G, 4] pixels.
        anchors_per_image: RPN_TRAIN_ANCHORS_PER_IMAGE.
        rpn_bbox_std_dev: [4].
        positive_iou, negative_iou: RPN_POSITIVE_IOU, RPN_NEGATIVE_IOU.

    Returns:
        rpn_match [A] int32 (1, -1, 0); rpn_bbox [anchors_per_image, 4] float32: deltas of the
        positive anchors in ascending anchor order, divided by the std dev, zero-padded.
    """
    rng = rng if rng is not None else np.random
    grid = anchors if isinstance(anchors, AnchorGrid) else None
    anchors = grid.anchors if grid is not None else anchors
    rpn_match = np.zeros([anchors.shape[0]], dtype=np.int32)
    rpn_bbox = np.zeros((anchors_per_image, 4), dtype=np.float32)
    gt_class_ids = np.asarray(gt_class_ids)
    gt_boxes = np.asarray(gt_boxes).reshape(-1, 4)

    def best_matches(boxes):
        return (_best_matches_on_grid(grid, boxes) if grid is not None
                else _best_matches(anchors, boxes))

    crowd = gt_class_ids < 0
    no_crowd = np.ones([anchors.shape[0]], dtype=bool)
    if crowd.any():
        no_crowd = best_matches(gt_boxes[crowd])[0] < 0.001
        gt_boxes = gt_boxes[~crowd]

    if len(gt_boxes):
        best_iou, best_gt, best_anchors = best_matches(gt_boxes)
        rpn_match[(best_iou < negative_iou) & no_crowd] = -1
        rpn_match[best_anchors] = 1
        rpn_match[best_iou >= positive_iou] = 1
    else:
        rpn_match[no_crowd] = -1

    positive = np.flatnonzero(rpn_match == 1)
    extra = len(positive) - anchors_per_image // 2
    if extra > 0:
        rpn_match[rng.choice(positive, extra, replace=False)] = 0
    positive = np.flatnonzero(rpn_match == 1)
    negative = np.flatnonzero(rpn_match == -1)
    keep = anchors_per_image - len(positive)
    if len(negative) > keep:
        rpn_match[negative] = 0
        rpn_match[negative[sample_distinct(rng, len(negative), keep)]] = -1

    positive = np.flatnonzero(rpn_match == 1)
    if len(positive):
        deltas = box_refinement(anchors[positive], gt_boxes[best_gt[positive]])
        rpn_bbox[:len(positive)] = deltas / np.asarray(rpn_bbox_std_dev, dtype=np.float32)
    return rpn_match, rpn_bbox


def sample_distinct(rng, n, k):
    """``k`` distinct integers of ``range(n)``, every k-subset equally likely -> [k] int64.

    For k much smaller than n (64 RPN anchors of some 30 000 negatives) it draws about k
    integers instead of shuffling all n as ``rng.choice(n, k, replace=False)`` does (0.5 ms
    per crop): the distinct values of uniform draws, in the order they first appear, are a
    uniformly random ordering's first k.
    """
    if 2 * k > n:
        return rng.permutation(n)[:k].astype(np.int64)
    chosen = np.zeros([0], dtype=np.int64)
    while len(chosen) < k:
        draws = np.concatenate([chosen, rng.randint(0, n, size=2 * k)])
        first = np.sort(np.unique(draws, return_index=True)[1])
        chosen = draws[first][:k]
    return chosen


def _best_matches(anchors, gt_boxes):
    """Each anchor's best IoU [A] and its box [A] (the first of equals), and the anchors that
    are the best of some box [K] (ties all count; none for a box no anchor overlaps).
    anchors [A, 4], gt_boxes [G, 4] pixels, G > 0."""
    best_iou = np.zeros([anchors.shape[0]])
    best_gt = np.zeros([anchors.shape[0]], dtype=np.int64)
    # IoU only for the anchors touching a box: the others have IoU 0 with every box.
    near = np.flatnonzero(touching_boxes(anchors, gt_boxes))
    overlaps = compute_overlaps(anchors[near], gt_boxes)          # [len(near), G]
    best_gt[near] = overlaps.argmax(axis=1)
    best_iou[near] = overlaps.max(axis=1)
    best_per_gt = overlaps.max(axis=0, initial=0.0)      # 0 when no anchor touches it
    rows = np.argwhere((overlaps == best_per_gt[None]) & (best_per_gt[None] > 0))[:, 0]
    return best_iou, best_gt, near[rows]


def _best_matches_on_grid(grid, gt_boxes):
    """:func:`_best_matches` from the (anchor, box) pairs that can overlap: the same IoUs to
    the last bit, so the same result wherever an anchor's IoU is positive (the box of an
    anchor overlapping none may differ; it is never used)."""
    anchor, box = grid.pairs(gt_boxes)
    iou = grid.pair_overlaps(anchor, gt_boxes[box])
    best_iou = np.zeros([len(grid)])
    np.maximum.at(best_iou, anchor, iou)
    first = np.full([len(grid)], len(gt_boxes), dtype=np.int64)
    equal = iou == best_iou[anchor]
    np.minimum.at(first, anchor[equal], box[equal])               # argmax's choice of equals
    best_gt = np.where(first < len(gt_boxes), first, 0)
    best_per_gt = np.zeros([len(gt_boxes)])
    np.maximum.at(best_per_gt, box, iou)
    best = (iou == best_per_gt[box]) & (best_per_gt[box] > 0)
    return best_iou, best_gt, anchor[best]
