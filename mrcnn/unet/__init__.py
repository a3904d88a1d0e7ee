"""The U-Net baseline (the seed report's configuration, plus a boundary-channel variant)."""

from mrcnn.unet.model import build_unet, dice_coefficient
from mrcnn.unet.postprocess import boundary_target, instances_from_probabilities
from mrcnn.unet.train import VARIANTS, UNetPredictor, UNetSequence, train_unet

__all__ = ["build_unet", "dice_coefficient", "boundary_target", "instances_from_probabilities",
           "VARIANTS", "UNetPredictor", "UNetSequence", "train_unet"]
