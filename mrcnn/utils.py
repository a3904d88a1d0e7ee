"""Matterport's ``mrcnn.utils`` names, re-exported from where they live now."""

from mrcnn.data.dataset import Dataset
from mrcnn.ops.anchors import generate_anchors, generate_pyramid_anchors
from mrcnn.ops.boxes import (apply_box_deltas, box_refinement, compute_iou, compute_overlaps,
                             denorm_boxes, extract_bboxes, norm_boxes)
from mrcnn.ops.image import (compose_image_meta, mold_image, parse_image_meta, resize_image,
                             resize_mask, unmold_image)
from mrcnn.ops.masks import expand_mask, minimize_mask, unmold_mask

__all__ = ["Dataset", "apply_box_deltas", "box_refinement", "compose_image_meta", "compute_iou",
           "compute_overlaps", "denorm_boxes", "expand_mask", "extract_bboxes",
           "generate_anchors", "generate_pyramid_anchors", "minimize_mask", "mold_image",
           "norm_boxes", "parse_image_meta", "resize_image", "resize_mask", "unmold_image",
           "unmold_mask"]
