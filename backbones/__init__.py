"""Backbone registry for mrcnn: ResNet-50/101, MobileNet v1/v2, DenseNet-121/169/201 and yours.

    from backbones import list_backbones, register_backbone, build_backbone
"""

import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from backbones.normalization import NORMS, apply_norm, group_count
from backbones.registry import (build_backbone, get_backbone_spec, list_backbones,
                                register_backbone, resolve_norm, unregister_backbone)
from backbones.spec import BackboneSpec
from backbones import resnet as _resnet  # noqa: F401  (registers resnet50/101)
from backbones import applications as _applications  # noqa: F401  (mobilenet, densenet)

__all__ = ["BackboneSpec", "NORMS", "apply_norm", "build_backbone", "get_backbone_spec",
           "group_count", "list_backbones", "register_backbone", "resolve_norm",
           "unregister_backbone"]
