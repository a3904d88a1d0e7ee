"""Matterport-compatible VOC-style AP: ``compute_matches``, ``compute_ap``,
``compute_ap_range``, ``compute_recall``.

This AP (area under the interpolated precision/recall curve at one mask-IoU threshold) is a
different number from the DSB2018 score and from COCO AP; report it under its own name.
"""

import numpy as np

from mrcnn.metrics.matching import mask_iou_matrix
from mrcnn.ops.boxes import compute_overlaps


def compute_matches(gt_boxes, gt_class_ids, gt_masks, pred_boxes, pred_class_ids, pred_scores,
                    pred_masks, iou_threshold=0.5, score_threshold=0.0):
    """Greedy matching, predictions by descending score, on mask IoU.

    Args:
        gt_boxes [N, 4], gt_class_ids [N], gt_masks [H, W, N]; pred_* likewise with
        pred_scores [M]. Boxes (pixels) are accepted for API compatibility; masks decide.

    Returns:
        gt_match [N] (index of the matched sorted prediction, -1 if none), pred_match [M]
        (index of the matched GT, -1 if none; predictions sorted by score), overlaps [M, N].
    """
    del gt_boxes, pred_boxes
    order = np.argsort(-np.asarray(pred_scores), kind="stable")
    pred_class_ids = np.asarray(pred_class_ids)[order]
    pred_masks = np.asarray(pred_masks)[..., order]
    overlaps = mask_iou_matrix(np.asarray(gt_masks), pred_masks).T  # [M, N]
    gt_match = -np.ones([np.asarray(gt_masks).shape[-1]], dtype=np.int64)
    pred_match = -np.ones([len(order)], dtype=np.int64)
    for i in range(len(order)):
        if np.asarray(pred_scores)[order[i]] < score_threshold:
            continue
        for j in np.argsort(-overlaps[i], kind="stable"):
            if gt_match[j] > -1:
                continue
            if overlaps[i, j] < iou_threshold:
                break
            if pred_class_ids[i] == gt_class_ids[j]:
                gt_match[j] = i
                pred_match[i] = j
                break
    return gt_match, pred_match, overlaps


def compute_ap(gt_boxes, gt_class_ids, gt_masks, pred_boxes, pred_class_ids, pred_scores,
               pred_masks, iou_threshold=0.5):
    """VOC-style AP at one mask-IoU threshold.

    Returns:
        mAP, precisions, recalls, overlaps. With no GT the AP is 1.0 when there is no
        prediction either, else 0.0.
    """
    gt_match, pred_match, overlaps = compute_matches(
        gt_boxes, gt_class_ids, gt_masks, pred_boxes, pred_class_ids, pred_scores, pred_masks,
        iou_threshold)
    if len(gt_match) == 0:
        ap = 1.0 if len(pred_match) == 0 else 0.0
        return ap, np.array([ap]), np.array([1.0]), overlaps
    hits = np.cumsum(pred_match > -1)
    precisions = hits / (np.arange(len(pred_match)) + 1)
    recalls = hits.astype(np.float64) / len(gt_match)
    precisions = np.concatenate([[0], precisions, [0]])
    recalls = np.concatenate([[0], recalls, [1]])
    for i in range(len(precisions) - 2, -1, -1):
        precisions[i] = max(precisions[i], precisions[i + 1])
    steps = np.flatnonzero(recalls[:-1] != recalls[1:]) + 1
    ap = float(np.sum((recalls[steps] - recalls[steps - 1]) * precisions[steps]))
    return ap, precisions, recalls, overlaps


def compute_ap_range(gt_box, gt_class_id, gt_mask, pred_box, pred_class_id, pred_score,
                     pred_mask, iou_thresholds=None, verbose=0):
    """Mean of :func:`compute_ap` over IoU thresholds (default 0.50:0.05:0.95)."""
    if iou_thresholds is None:
        iou_thresholds = np.round(np.arange(0.5, 1.0, 0.05), 2)
    aps = [compute_ap(gt_box, gt_class_id, gt_mask, pred_box, pred_class_id, pred_score,
                      pred_mask, iou_threshold=t)[0] for t in iou_thresholds]
    if verbose:
        print(f"AP @{iou_thresholds[0]:.2f}-{iou_thresholds[-1]:.2f}:\t {np.mean(aps):.3f}")
    return float(np.mean(aps))


def compute_recall(pred_boxes, gt_boxes, iou):
    """Box recall: the fraction of GT boxes whose best predicted box has IoU >= ``iou``.

    Returns:
        recall, positive_ids (indices of the GT boxes found).
    """
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    pred_boxes = np.asarray(pred_boxes, dtype=np.float64).reshape(-1, 4)
    if len(gt_boxes) == 0:
        return 1.0, np.zeros([0], dtype=np.int64)
    if len(pred_boxes) == 0:
        return 0.0, np.zeros([0], dtype=np.int64)
    overlaps = compute_overlaps(pred_boxes, gt_boxes)
    best = overlaps.max(axis=0)
    positive_ids = np.flatnonzero(best >= iou)
    return len(positive_ids) / len(gt_boxes), positive_ids
