"""RPN training targets (NumPy): which anchors are positive/negative and their deltas."""

import numpy as np

from mrcnn.ops.boxes import box_refinement, compute_overlaps, touching_boxes


def build_rpn_targets(anchors, gt_class_ids, gt_boxes, anchors_per_image, rpn_bbox_std_dev,
                      rng=None, positive_iou=0.7, negative_iou=0.3):
    """Label anchors and compute the deltas of positive ones.

    An anchor is positive with IoU >= ``positive_iou`` to some box, or when it is the best
    anchor of a box; negative with IoU < ``negative_iou`` (and not touching a crowd box, class
    id < 0); otherwise neutral.
    Positives are subsampled to half of ``anchors_per_image``, negatives fill the rest.

    Args:
        anchors: [A, 4] pixels. gt_class_ids: [G]. gt_boxes: [G, 4] pixels.
        anchors_per_image: RPN_TRAIN_ANCHORS_PER_IMAGE.
        rpn_bbox_std_dev: [4].
        positive_iou, negative_iou: RPN_POSITIVE_IOU, RPN_NEGATIVE_IOU.

    Returns:
        rpn_match [A] int32 (1, -1, 0); rpn_bbox [anchors_per_image, 4] float32: deltas of the
        positive anchors in ascending anchor order, divided by the std dev, zero-padded.
    """
    rng = rng if rng is not None else np.random
    rpn_match = np.zeros([anchors.shape[0]], dtype=np.int32)
    rpn_bbox = np.zeros((anchors_per_image, 4), dtype=np.float32)
    gt_class_ids = np.asarray(gt_class_ids)
    gt_boxes = np.asarray(gt_boxes).reshape(-1, 4)

    crowd = gt_class_ids < 0
    no_crowd = np.ones([anchors.shape[0]], dtype=bool)
    if crowd.any():
        near = np.flatnonzero(touching_boxes(anchors, gt_boxes[crowd]))
        no_crowd[near] = compute_overlaps(anchors[near], gt_boxes[crowd]).max(axis=1) < 0.001
        gt_boxes = gt_boxes[~crowd]

    best_gt = np.zeros([anchors.shape[0]], dtype=np.int64)
    if len(gt_boxes):
        # IoU only for the anchors touching a box: the others have IoU 0 with every box.
        near = np.flatnonzero(touching_boxes(anchors, gt_boxes))
        overlaps = compute_overlaps(anchors[near], gt_boxes)          # [len(near), G]
        best_gt[near] = overlaps.argmax(axis=1)
        best_iou = np.zeros([anchors.shape[0]])
        best_iou[near] = overlaps.max(axis=1)
        rpn_match[(best_iou < negative_iou) & no_crowd] = -1
        # Every box gets its best anchors, even below positive_iou (ties all count).
        best_per_gt = overlaps.max(axis=0, initial=0.0)      # 0 when no anchor touches it
        best_anchor_rows = np.argwhere((overlaps == best_per_gt[None]) & (best_per_gt[None] > 0))
        rpn_match[near[best_anchor_rows[:, 0]]] = 1
        rpn_match[best_iou >= positive_iou] = 1
    else:
        rpn_match[no_crowd] = -1

    positive = np.flatnonzero(rpn_match == 1)
    extra = len(positive) - anchors_per_image // 2
    if extra > 0:
        rpn_match[rng.choice(positive, extra, replace=False)] = 0
    positive = np.flatnonzero(rpn_match == 1)
    negative = np.flatnonzero(rpn_match == -1)
    extra = len(negative) - (anchors_per_image - len(positive))
    if extra > 0:
        rpn_match[rng.choice(negative, extra, replace=False)] = 0

    positive = np.flatnonzero(rpn_match == 1)
    if len(positive):
        deltas = box_refinement(anchors[positive], gt_boxes[best_gt[positive]])
        rpn_bbox[:len(positive)] = deltas / np.asarray(rpn_bbox_std_dev, dtype=np.float32)
    return rpn_match, rpn_bbox
