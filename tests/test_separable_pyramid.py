"""SEPARABLE_PYRAMID_CONVS: the FPN's 3x3 output convs and the RPN's shared conv (True), or
the RPN's shared conv alone ("rpn"), as depthwise-separable convs."""

import math
import re

import keras
import numpy as np
import pytest

from mrcnn import model as modellib
from mrcnn import weights as weights_lib
from tests.conftest import TinyConfig, ZeroConfidenceConfig

PYRAMID_CONVS = ["fpn_p2", "fpn_p3", "fpn_p4", "fpn_p5", "rpn_conv_shared"]


class SeparableConfig(TinyConfig):
    SEPARABLE_PYRAMID_CONVS = True


class SeparableInferenceConfig(ZeroConfidenceConfig):
    SEPARABLE_PYRAMID_CONVS = True


class SeparableRPNInferenceConfig(ZeroConfidenceConfig):
    SEPARABLE_PYRAMID_CONVS = "rpn"


INFERENCE_CONFIGS = {False: ZeroConfidenceConfig, True: SeparableInferenceConfig,
                     "rpn": SeparableRPNInferenceConfig}


@pytest.mark.parametrize("value", ["yes", 1, None, "RPN"])
def test_config_rejects_other_values(value):
    config = TinyConfig()
    config.SEPARABLE_PYRAMID_CONVS = value
    with pytest.raises(ValueError, match=f"SEPARABLE_PYRAMID_CONVS={value!r}; use False, 'rpn'"):
        config.validate()


@pytest.mark.parametrize("value", [False, True, "rpn"])
def test_config_accepts_the_three_choices(value):
    config = TinyConfig()
    config.SEPARABLE_PYRAMID_CONVS = value
    config.validate()


@pytest.mark.parametrize("value, separable_names", [
    (True, PYRAMID_CONVS), ("rpn", ["rpn_conv_shared"])])
def test_separable_layers_and_their_parameter_saving(tmp_path, value, separable_names):
    """Each separable conv holds a 3x3 depthwise kernel, a 1x1 pointwise kernel and a bias
    (True: all five; "rpn": rpn_conv_shared alone, the FPN's output convs stay full); the
    model has exactly the hand-counted parameters fewer than the full-conv one."""
    full = modellib.MaskRCNN("inference", ZeroConfidenceConfig(), str(tmp_path)).keras_model
    separable = modellib.MaskRCNN("inference", INFERENCE_CONFIGS[value](),
                                  str(tmp_path)).keras_model
    c, r = TinyConfig.TOP_DOWN_PYRAMID_SIZE, TinyConfig.RPN_CONV_CHANNELS
    saved = 0
    for name in PYRAMID_CONVS:
        out = r if name == "rpn_conv_shared" else c
        full_shapes = [(3, 3, c, out), (out,)]
        assert [tuple(w.shape) for w in full.get_layer(name).weights] == full_shapes
        shapes = [tuple(w.shape) for w in separable.get_layer(name).weights]
        if name in separable_names:
            assert shapes == [(3, 3, c, 1), (1, 1, c, out), (out,)]
            # full 3x3: 9 c out + out; separable: 9 c + c out + out (biases the same)
            saved += 9 * c * out - 9 * c - c * out
        else:
            assert shapes == full_shapes
    assert full.count_params() - separable.count_params() == saved


def test_separable_model_trains(tmp_path, synthetic_dataset):
    model = modellib.MaskRCNN("training", SeparableConfig(), str(tmp_path))
    before = model.keras_model.get_layer("fpn_p2").get_weights()
    history = model.train(synthetic_dataset, None, 1e-3, 1, "all", verbose=0)
    assert all(math.isfinite(history.history[k][0])
               for k in ("rpn_class_loss", "rpn_bbox_loss", "mrcnn_mask_loss"))
    after = model.keras_model.get_layer("fpn_p2").get_weights()
    assert all(not np.allclose(a, b) for a, b in zip(before, after))


def test_separable_model_round_trips_in_safe_mode(tmp_path):
    keras.utils.set_random_seed(0)
    model = modellib.MaskRCNN("inference", SeparableInferenceConfig(), str(tmp_path))
    image = np.random.RandomState(3).randint(0, 255, (128, 128, 3)).astype(np.uint8)
    expected = model.detect([image])[0]
    assert len(expected["class_ids"])           # zero confidence: something to compare
    path = model.save(str(tmp_path / "separable.keras"))
    again = modellib.MaskRCNN.from_keras_file(path, SeparableInferenceConfig()).detect([image])
    for key in ("rois", "class_ids", "scores", "masks"):
        np.testing.assert_array_equal(again[0][key], expected[key])


@pytest.mark.parametrize("file_value, model_value, layer, advice", [
    (True, False, "fpn_p[2-5]", "True"),
    (False, True, "fpn_p[2-5]", "False or 'rpn'"),
    ("rpn", False, "rpn_conv_shared", "'rpn' or True"),
    (False, "rpn", "rpn_conv_shared", "False"),
    ("rpn", True, "fpn_p[2-5]", "False or 'rpn'"),
    (True, "rpn", "fpn_p[2-5]", "True"),
])
def test_weights_of_another_kind_name_the_values_that_fit(
        tmp_path, file_value, model_value, layer, advice):
    """A file trained with another SEPARABLE_PYRAMID_CONVS says so, not a width: the error
    names the first layer that differs and every value under which it has the file's kind."""
    source = modellib.MaskRCNN("inference", INFERENCE_CONFIGS[file_value](),
                               str(tmp_path)).keras_model
    path = weights_lib.save_weights_by_name(source, tmp_path / "w.h5")
    target = modellib.MaskRCNN("inference", INFERENCE_CONFIGS[model_value](),
                               str(tmp_path)).keras_model
    with pytest.raises(ValueError, match=rf"'{layer}'.*SEPARABLE_PYRAMID_CONVS = "
                       rf"{re.escape(advice)} as in the run") as err:
        weights_lib.load_weights_by_name(target, path)
    assert "TOP_DOWN_PYRAMID_SIZE" not in str(err.value)
