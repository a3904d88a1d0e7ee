"""Mask R-CNN's custom Keras layers (all serializable, no Lambda layers)."""

from mrcnn.layers.detection import DetectionLayer, RefineBoxes
from mrcnn.layers.detection_target import DetectionTargetLayer
from mrcnn.layers.full_conv import WholeInputConv2D
from mrcnn.layers.proposal import AnchorGenerator, ProposalLayer
from mrcnn.layers.roi_align import (ContextBoxes, GatherRows, ImageROICrop, PyramidROIAlign,
                                    ScatterToSlots, SelectBoxes, UnflattenRois)

__all__ = ["AnchorGenerator", "ContextBoxes", "DetectionLayer", "DetectionTargetLayer",
           "GatherRows", "ImageROICrop", "ProposalLayer", "PyramidROIAlign", "RefineBoxes",
           "ScatterToSlots", "SelectBoxes", "UnflattenRois", "WholeInputConv2D"]
