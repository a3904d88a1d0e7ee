"""The Kaggle 2018 Data Science Bowl score.

For each image and each threshold t in 0.50, 0.55, ..., 0.95, a predicted object matches a
true object when their IoU is strictly greater than t (one-to-one; for t >= 0.5 a match is
unique anyway when the objects of each side do not overlap). Then
``precision(t) = TP(t) / (TP(t) + FP(t) + FN(t))``; the image score is the mean over t and the
dataset score the mean over images. An image with neither true nor predicted objects scores 1;
one with objects on one side only scores 0.
"""

import numpy as np

from mrcnn.metrics.matching import label_iou_matrix, mask_iou_matrix

DSB_THRESHOLDS = np.round(np.arange(0.5, 1.0, 0.05), 2)


def _one_to_one_matches(iou, threshold):
    """Number of true/pred pairs matched greedily by IoU with IoU > threshold."""
    pairs = np.argwhere(iou > threshold)
    if len(pairs) == 0:
        return 0
    order = np.argsort(-iou[pairs[:, 0], pairs[:, 1]], kind="stable")
    used_t, used_p = set(), set()
    for i, j in pairs[order]:
        if i not in used_t and j not in used_p:
            used_t.add(i)
            used_p.add(j)
    return len(used_t)


def dsb_true_positives(true_masks, pred_masks, thresholds=DSB_THRESHOLDS, iou=None):
    """TP(t) for each threshold, for one image: true/predicted pairs matched one-to-one with
    mask IoU > t. FP(t) = M - TP(t) and FN(t) = N - TP(t).

    Args:
        true_masks: [H, W, N] bool; pred_masks: [H, W, M] bool.
        iou: their [N, M] :func:`mask_iou_matrix`, if the caller has it already.

    Returns:
        [len(thresholds)] int array.
    """
    if true_masks.shape[-1] == 0 or pred_masks.shape[-1] == 0:
        return np.zeros(len(thresholds), dtype=int)
    if iou is None:
        iou = mask_iou_matrix(true_masks, pred_masks)
    return np.array([_one_to_one_matches(iou, t) for t in thresholds], dtype=int)


def precisions_from_counts(tp, n_true, n_pred):
    """precision(t) = TP / (TP + FP + FN) from TP(t) [T] and the object counts; an image with
    neither true nor predicted objects scores 1."""
    tp = np.asarray(tp)
    if n_true == 0 and n_pred == 0:
        return np.ones(len(tp))
    return tp / (n_true + n_pred - tp)


def dsb_precisions(true_masks, pred_masks, thresholds=DSB_THRESHOLDS):
    """precision(t) = TP / (TP + FP + FN) for each threshold, for one image.

    Args:
        true_masks: [H, W, N] bool; pred_masks: [H, W, M] bool.

    Returns:
        [len(thresholds)] float array.
    """
    tp = dsb_true_positives(true_masks, pred_masks, thresholds)
    return precisions_from_counts(tp, true_masks.shape[-1], pred_masks.shape[-1])


def dsb_image_score(true_masks, pred_masks, thresholds=DSB_THRESHOLDS):
    """Mean over thresholds of TP / (TP + FP + FN) for one image."""
    return float(dsb_precisions(true_masks, pred_masks, thresholds).mean())


def dsb_label_score(true_labels, pred_labels, thresholds=DSB_THRESHOLDS):
    """:func:`dsb_image_score` of two label images [H, W] (0 = background, objects 1..N;
    numbers with no pixels are not objects), for images with too many objects for masks."""
    iou = label_iou_matrix(true_labels, pred_labels)
    iou = iou[np.isin(np.arange(1, iou.shape[0] + 1), np.unique(true_labels))]
    iou = iou[:, np.isin(np.arange(1, iou.shape[1] + 1), np.unique(pred_labels))]
    n_true, n_pred = iou.shape
    tp = np.array([_one_to_one_matches(iou, t) for t in thresholds], dtype=int) \
        if n_true and n_pred else np.zeros(len(thresholds), dtype=int)
    return float(precisions_from_counts(tp, n_true, n_pred).mean())


def dsb_score(true_mask_list, pred_mask_list, thresholds=DSB_THRESHOLDS):
    """Dataset score: the mean of the image scores."""
    if len(true_mask_list) != len(pred_mask_list):
        raise ValueError("need one prediction per image")
    if not true_mask_list:
        raise ValueError("no images to score")
    return float(np.mean([dsb_image_score(t, p, thresholds)
                          for t, p in zip(true_mask_list, pred_mask_list)]))


# Nucleus areas (px of the original image) splitting the score's breakdowns by size: < 60
# (about 9 px across), 60-150, 150-400, 400-1000, >= 1000.
SIZE_EDGES = (60, 150, 400, 1000)


def size_buckets(areas, edges=SIZE_EDGES):
    """Bucket of each area [N] -> (indices [N] in 0..len(edges), bucket names such as
    '<60', '60-150', '>=1000')."""
    bucket = np.searchsorted(np.asarray(edges), np.asarray(areas), side="right")
    names = [f"<{edges[0]}"] + [f"{a}-{b}" for a, b in zip(edges, edges[1:])] + \
        [f">={edges[-1]}"]
    return bucket, names
