"""Pixel-level foreground IoU and Dice (instances merged into one foreground mask)."""

import numpy as np


def foreground(masks):
    """[H, W] or [H, W, N] masks -> [H, W] bool foreground."""
    masks = np.asarray(masks)
    if masks.ndim == 3:
        return masks.any(axis=-1)
    return masks.astype(bool)


def pixel_iou(true_masks, pred_masks):
    """|T ∩ P| / |T ∪ P| of the foregrounds; 1.0 when both are empty."""
    t, p = foreground(true_masks), foreground(pred_masks)
    union = np.logical_or(t, p).sum()
    return 1.0 if union == 0 else float(np.logical_and(t, p).sum() / union)


def dice(true_masks, pred_masks):
    """2 |T ∩ P| / (|T| + |P|) of the foregrounds; 1.0 when both are empty."""
    t, p = foreground(true_masks), foreground(pred_masks)
    total = t.sum() + p.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(t, p).sum() / total)
