"""Object-size normalisation (OBJECT_SIZE_TARGET) in training: crops scaled by each image's
median object. Detect's second pass at the scale the first pass's objects call for is tested in
test_inference.py (it shares that module's trained model)."""

import numpy as np
import pytest

from mrcnn.data.dataset import Dataset
from mrcnn.data.loader import load_image_gt, object_scale
from mrcnn.ops.image import choose_crop, resize_image
from tests.conftest import TinyConfig


class SquaresDataset(Dataset):
    """One 64 x 64 image with square objects of the given sides (pixels)."""

    def __init__(self, sides):
        super().__init__()
        self.sides = sides
        self.add_class("sq", 1, "square")
        self.add_image("sq", image_id=0, path="squares.png")
        self.prepare()

    def load_image(self, image_id):
        return np.full((64, 64, 3), 40, np.uint8)

    def load_mask(self, image_id):
        masks = np.zeros((64, 64, len(self.sides)), bool)
        for i, side in enumerate(self.sides):
            masks[2 + 20 * i:2 + 20 * i + side, 2:2 + side, i] = True
        return masks, np.ones(len(self.sides), np.int32)


def test_object_size_is_the_median_equivalent_diameter():
    # areas 4, 16, 100 -> median 16 -> diameter sqrt(4 * 16 / pi) = 4.514
    assert SquaresDataset([2, 4, 10]).object_size(0) == pytest.approx(np.sqrt(64 / np.pi))
    assert SquaresDataset([]).object_size(0) is None


def test_training_scale_brings_the_median_object_to_the_target():
    class Normalised(TinyConfig):
        OBJECT_SIZE_TARGET = 12.0
        OBJECT_SCALE_RANGE = (0.5, 3.0)

    dataset = SquaresDataset([2, 4, 10])
    diameter = np.sqrt(64 / np.pi)
    assert object_scale(dataset, Normalised(), 0) == pytest.approx(12.0 / diameter)  # 2.66
    Normalised.OBJECT_SCALE_RANGE = (0.5, 2.5)
    assert object_scale(dataset, Normalised(), 0) == 2.5                              # clipped
    assert object_scale(dataset, TinyConfig(), 0) is None                             # off
    assert object_scale(SquaresDataset([]), Normalised(), 0) is None                  # no objects

    # A crop: one 8-pixel square (diameter 9.03) and target 4.51 give scale 0.5: the window
    # is 128 original pixels (the 64-pixel image, zero-padded), and the square comes out 4
    # pixels wide in the 64 x 64 crop.
    Normalised.OBJECT_SIZE_TARGET = 0.5 * 8 * 2 / np.sqrt(np.pi)
    Normalised.IMAGE_RESIZE_MODE = "crop"
    Normalised.IMAGE_MIN_DIM = Normalised.IMAGE_MAX_DIM = 64
    Normalised.USE_MINI_MASK = False
    image, _, _, bbox, mask = load_image_gt(SquaresDataset([8]), Normalised(), 0,
                                            rng=np.random.RandomState(0))
    assert image.shape == (64, 64, 3)
    np.testing.assert_array_equal(bbox, [[1, 1, 5, 5]])
    assert mask.sum() == 16


def test_choose_crop_and_resize_take_a_given_scale():
    rng = np.random.RandomState(0)
    assert choose_crop((300, 400), 256, 2, rng, scale=0.5)[2] == 512
    assert choose_crop((300, 400), 256, 2, rng, scale=4.0)[2] == 64
    image = np.zeros((100, 70, 3), np.uint8)
    out, window, scale, _, _ = resize_image(image, min_dim=64, min_scale=2, mode="pad64",
                                            scale=1.5)
    assert scale == 1.5 and window == (21, 11, 171, 116) and out.shape == (192, 128, 3)
    assert resize_image(image, min_dim=64, min_scale=2, mode="pad64")[2] == 2.0
