"""mrcnn: Mask R-CNN for Keras 3 / TensorFlow 2 with pluggable backbones.

Matterport-style use::

    from mrcnn.config import Config
    from mrcnn import model as modellib, utils, visualize
"""

import os as _os

# TensorFlow's C++ warnings (grappler cost estimates for dynamic shapes) drown the progress
# output; users can still set TF_CPP_MIN_LOG_LEVEL themselves.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
