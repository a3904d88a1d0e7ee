"""The mask loss's outline weighting, the auxiliary contour loss and the soft-Dice term,
checked against hand-computed values; the contour output trained and left out of inference,
the Dice term added to the trained total."""

import math

import numpy as np
import pytest

from mrcnn.losses import (LOSS_NAMES, mask_outline_band, mrcnn_contour_loss,
                          mrcnn_mask_dice_loss, mrcnn_mask_loss)


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


def test_contour_loss_is_the_cross_entropy_against_the_outline_band():
    target = np.concatenate([_square_target(), np.ones((1, 7, 7), np.float32)])
    class_ids = np.array([1, 0])
    pred = np.full((2, 7, 7, 2), 0.8, np.float32)
    pred[0, 3, 3, 1] = 0.1                  # the centre, outside the band: a true negative
    a, b = -math.log(0.8), -math.log(0.2)
    # the band's 24 pixels are the positives, the other 24 + the centre negatives
    expected = (24 * a + 24 * b - math.log(0.9)) / 49
    assert float(mrcnn_contour_loss(target, class_ids, pred)) == pytest.approx(expected, rel=1e-5)
    assert float(mrcnn_contour_loss(target, np.array([0, 0]), pred)) == 0.0


def test_contour_output_trains_adds_its_weighted_loss_and_stays_out_of_inference(
        tmp_path, synthetic_dataset):
    from mrcnn import model as modellib
    from tests.conftest import TinyConfig

    class ContourConfig(TinyConfig):
        MASK_CONTOUR_WEIGHT = 2.0
        STEPS_PER_EPOCH = 2

    model = modellib.MaskRCNN("training", ContourConfig(), str(tmp_path))
    layer = model.keras_model.get_layer("mrcnn_mask_contour")
    before = [w.copy() for w in layer.get_weights()]
    history = model.train(synthetic_dataset, synthetic_dataset, 1e-2, 1, "heads", verbose=0).history
    for prefix in ("", "val_"):
        contour = history[prefix + "mrcnn_contour_loss"][0]
        assert math.isfinite(contour) and contour > 0
        total = (sum(history[prefix + k][0] for k in LOSS_NAMES) + 2.0 * contour
                 + history[prefix + "weight_decay_loss"][0])
        assert history[prefix + "loss"][0] == pytest.approx(total, rel=1e-4, abs=1e-5)
    assert any(not np.allclose(a, b) for a, b in zip(before, layer.get_weights()))

    inference = modellib.MaskRCNN("inference", ContourConfig(), str(tmp_path))
    names = {lay.name for lay in inference.keras_model.layers}
    assert "mrcnn_mask_contour" not in names and "mrcnn_mask" in names
    inference.load_weights(model.find_last())          # the extra layer in the file is ignored
    np.testing.assert_array_equal(inference.keras_model.get_layer("mrcnn_mask").get_weights()[0],
                                  model.keras_model.get_layer("mrcnn_mask").get_weights()[0])


def test_contour_weight_defaults_to_off_and_negative_is_refused():
    from mrcnn.modeling.factory import maskrcnn_kwargs
    from tests.conftest import TinyConfig
    config = TinyConfig()
    assert maskrcnn_kwargs(config.validate(), "training")["mask_contour_weight"] == 0.0
    config.MASK_CONTOUR_WEIGHT = -0.5
    with pytest.raises(ValueError, match="MASK_CONTOUR_WEIGHT=-0.5 must be >= 0"):
        config.validate()


def test_dice_loss_is_one_minus_the_soft_dice_per_roi_averaged_over_positives():
    target = np.concatenate([_square_target(), _square_target(), np.ones((1, 7, 7), np.float32)])
    class_ids = np.array([1, 1, 0])          # the third row is a placeholder: ignored
    pred = np.zeros((3, 7, 7, 2), np.float32)
    pred[0, 2:5, 2:5, 1] = 1.0               # exact: Dice 1
    pred[1, :, :, 1] = 0.5                   # 0.5 everywhere: overlap 4.5, total 24.5 + 9
    pred[1, :, :, 0] = 1.0                   # another class's channel: not read
    second = 1.0 - (2 * 4.5 + 1.0) / (24.5 + 9 + 1.0)
    assert float(mrcnn_mask_dice_loss(target, class_ids, pred)) == \
        pytest.approx(second / 2, rel=1e-5)
    assert float(mrcnn_mask_dice_loss(target, np.array([0, 0, 0]), pred)) == 0.0


def test_dice_term_trains_and_adds_its_weighted_loss(tmp_path, synthetic_dataset):
    from mrcnn import model as modellib
    from tests.conftest import TinyConfig

    class DiceConfig(TinyConfig):
        MASK_DICE_WEIGHT = 0.5
        STEPS_PER_EPOCH = 2

    model = modellib.MaskRCNN("training", DiceConfig(), str(tmp_path))
    history = model.train(synthetic_dataset, synthetic_dataset, 1e-2, 1, "heads", verbose=0).history
    for prefix in ("", "val_"):
        dice = history[prefix + "mrcnn_mask_dice_loss"][0]
        assert 0 < dice < 1
        total = (sum(history[prefix + k][0] for k in LOSS_NAMES) + 0.5 * dice
                 + history[prefix + "weight_decay_loss"][0])
        assert history[prefix + "loss"][0] == pytest.approx(total, rel=1e-4, abs=1e-5)
    config = DiceConfig()
    config.MASK_DICE_WEIGHT = -1
    with pytest.raises(ValueError, match="MASK_DICE_WEIGHT=-1 must be >= 0"):
        config.validate()
