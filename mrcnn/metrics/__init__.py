"""Evaluation metrics: instance matching, pixel IoU/Dice, the DSB2018 score, VOC-style AP
(Matterport's compute_ap), COCO AP via pycocotools, Kaggle RLE and submissions."""

from mrcnn.metrics.ap import compute_ap, compute_ap_range, compute_matches, compute_recall
from mrcnn.metrics.coco import coco_evaluate, coco_results
from mrcnn.metrics.dsb import (DSB_THRESHOLDS, dsb_image_score, dsb_label_score, dsb_precisions,
                               dsb_score, dsb_true_positives)
from mrcnn.metrics.matching import label_iou_matrix, mask_iou_matrix, mask_recall
from mrcnn.metrics.pixel import dice, pixel_iou
from mrcnn.metrics.rle import (mask_to_rle, read_submission, remove_overlaps, rle_decode,
                               rle_encode, write_submission)

__all__ = ["compute_ap", "compute_ap_range", "compute_matches", "compute_recall",
           "coco_evaluate", "coco_results", "DSB_THRESHOLDS", "dsb_image_score",
           "dsb_label_score", "dsb_precisions", "dsb_score", "dsb_true_positives",
           "label_iou_matrix", "mask_iou_matrix",
           "mask_recall", "dice", "pixel_iou",
           "mask_to_rle", "read_submission", "remove_overlaps", "rle_decode", "rle_encode",
           "write_submission"]
