"""The mask loss's outline weighting, checked against hand-computed values."""

import math

import numpy as np
import pytest

from mrcnn.losses import mask_outline_band, mrcnn_mask_loss


def _square_target():
    target = np.zeros((1, 7, 7), np.float32)
    target[0, 2:5, 2:5] = 1.0   # a 3x3 object in a 7x7 mask
    return target


def test_outline_band_is_one_pixel_either_side_of_the_outline():
    band = np.asarray(mask_outline_band(_square_target()))[0]
    expected = np.zeros((7, 7), np.float32)
    expected[1:6, 1:6] = 1.0    # 3x3 dilation: the 5x5 square around the object
    expected[3, 3] = 0.0        # 3x3 erosion keeps only the centre
    np.testing.assert_array_equal(band, expected)


def test_mask_loss_weighs_outline_pixels_by_one_plus_the_weight():
    target = np.concatenate([_square_target(), np.ones((1, 7, 7), np.float32)])
    class_ids = np.array([1, 0])            # the second row is a placeholder: ignored
    pred = np.full((2, 7, 7, 2), 0.8, np.float32)
    a, b = -math.log(0.8), -math.log(0.2)   # BCE of a true and of a false pixel
    # object pixels: 8 in the band, the centre outside it; background: 16 in the band, 24 out
    plain = (9 * a + 40 * b) / 49
    weighted = (3 * (8 * a + 16 * b) + (a + 24 * b)) / (3 * 24 + 25)
    assert float(mrcnn_mask_loss(target, class_ids, pred)) == pytest.approx(plain, rel=1e-5)
    assert float(mrcnn_mask_loss(target, class_ids, pred, boundary_weight=2.0)) == \
        pytest.approx(weighted, rel=1e-5)
    # no positive ROI: 0, not NaN
    assert float(mrcnn_mask_loss(target, np.array([0, 0]), pred, boundary_weight=2.0)) == 0.0


def test_config_boundary_weight_reaches_the_model_and_negative_is_refused():
    from mrcnn.modeling.factory import maskrcnn_kwargs
    from tests.conftest import TinyConfig
    config = TinyConfig()
    config.MASK_BOUNDARY_WEIGHT = 2.0
    assert maskrcnn_kwargs(config.validate(), "training")["mask_boundary_weight"] == 2.0
    config.MASK_BOUNDARY_WEIGHT = -1.0
    with pytest.raises(ValueError, match="MASK_BOUNDARY_WEIGHT=-1.0 must be >= 0"):
        config.validate()
