"""Matching predicted instance masks to true ones."""

import numpy as np


def mask_iou_matrix(true_masks, pred_masks):
    """IoU of every true mask [H, W, N] with every predicted mask [H, W, M] -> [N, M]."""
    t = true_masks.reshape(-1, true_masks.shape[-1]).astype(np.float32)
    p = pred_masks.reshape(-1, pred_masks.shape[-1]).astype(np.float32)
    inter = t.T @ p
    union = t.sum(0)[:, None] + p.sum(0)[None, :] - inter
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
