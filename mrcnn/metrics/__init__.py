"""Evaluation metrics (instance matching so far; DSB2018, COCO and RLE are tracked in issues)."""

from mrcnn.metrics.matching import mask_iou_matrix, mask_recall

__all__ = ["mask_iou_matrix", "mask_recall"]
