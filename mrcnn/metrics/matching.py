"""Matching predicted instance masks to true ones."""

import numpy as np


def _labels(masks):
    """[H, W, K] bool without overlaps -> [H*W] int64 labels (0 = none), else None."""
    flat = masks.reshape(-1, masks.shape[-1])
    if flat.shape[-1] == 0 or flat.sum(axis=1, dtype=np.int32).max() > 1:
        return None
    return np.where(flat.any(axis=1), flat.argmax(axis=1) + 1, 0)


def mask_iou_matrix(true_masks, pred_masks):
    """IoU of every true mask [H, W, N] with every predicted mask [H, W, M] -> [N, M].

    Non-overlapping instance sets (the usual case) are counted through one joint histogram of
    label pairs (linear in pixels); overlapping ones through a matrix product.
    """
    true_masks, pred_masks = np.asarray(true_masks), np.asarray(pred_masks)
    n, m = true_masks.shape[-1], pred_masks.shape[-1]
    if n == 0 or m == 0:
        return np.zeros((n, m))
    t_labels, p_labels = _labels(true_masks), _labels(pred_masks)
    if t_labels is not None and p_labels is not None:
        joint = np.bincount(t_labels * (m + 1) + p_labels,
                            minlength=(n + 1) * (m + 1)).reshape(n + 1, m + 1)
        inter = joint[1:, 1:].astype(np.float64)
        union = joint[1:, :].sum(1)[:, None] + joint[:, 1:].sum(0)[None, :] - inter
        return np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    pixels = int(np.prod(true_masks.shape[:-1]))
    t = true_masks.reshape(pixels, true_masks.shape[-1]).astype(np.float32)
    p = pred_masks.reshape(pixels, pred_masks.shape[-1]).astype(np.float32)
    # float32 sums of 0/1 values are exact integers (< 2**24 pixels); divide in float64 so
    # an IoU of exactly 0.8 compares equal to the threshold 0.8.
    inter = (t.T @ p).astype(np.float64)
    union = t.sum(0, dtype=np.float64)[:, None] + p.sum(0, dtype=np.float64)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def label_iou_matrix(true_labels, pred_labels):
    """IoU of every true object with every predicted object of two label images [H, W]
    (0 = background, objects numbered 1..N and 1..M; absent numbers give empty rows or
    columns) -> [N, M], through one joint histogram: large images with thousands of objects
    never become [H, W, N] masks."""
    t = np.asarray(true_labels).astype(np.int64).ravel()
    p = np.asarray(pred_labels).astype(np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"label images of different sizes: {np.shape(true_labels)} and "
                         f"{np.shape(pred_labels)}")
    n, m = int(t.max(initial=0)), int(p.max(initial=0))
    joint = np.bincount(t * (m + 1) + p, minlength=(n + 1) * (m + 1)).reshape(n + 1, m + 1)
    inter = joint[1:, 1:].astype(np.float64)
    union = joint[1:, :].sum(1)[:, None] + joint[:, 1:].sum(0)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def mask_recall(true_masks, pred_masks, threshold=0.5):
    """(found, total, best IoU of each true mask): a true mask is found when some prediction
    overlaps it with IoU > threshold."""
    total = true_masks.shape[-1]
    if total == 0:
        return 0, 0, np.zeros([0])
    if pred_masks.shape[-1] == 0:
        return 0, total, np.zeros([total])
    best = mask_iou_matrix(true_masks, pred_masks).max(axis=1)
    return int((best > threshold).sum()), total, best
