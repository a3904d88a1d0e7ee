"""Optimizers: AdamW's decoupled weight decay (kernels only), the L2 loss term only under SGD,
and an AdamW run resumed with its moments and step count."""

import keras
import numpy as np
import pytest

from mrcnn import model as modellib
from mrcnn.modeling.factory import maskrcnn_kwargs
from mrcnn.optimizers import make_optimizer
from mrcnn.training import optimizer_state_path
from tests.conftest import TinyConfig


class AdamWConfig(TinyConfig):
    OPTIMIZER = "adamw"
    WEIGHT_DECAY = 0.05
    LEARNING_RATE_WARMUP_STEPS = 8


def _apply_zero_gradients(optimizer):
    variables = {name: keras.Variable(np.full((3,), 2.0, "float32"), name=name)
                 for name in ("kernel", "bias", "gamma", "beta")}
    optimizer.apply([keras.ops.zeros((3,)) for _ in variables], list(variables.values()))
    return {name: np.asarray(v) for name, v in variables.items()}


def test_adamw_decays_kernels_but_not_biases_or_norms():
    config = AdamWConfig()
    config.WEIGHT_DECAY = 0.5
    config.LEARNING_RATE_WARMUP_STEPS = 0
    after = _apply_zero_gradients(make_optimizer(config, 0.1))
    # zero gradients leave Adam's step at 0: only the decoupled decay w -= lr * wd * w acts
    np.testing.assert_allclose(after["kernel"], 2.0 * (1 - 0.1 * 0.5), rtol=1e-6)
    for name in ("bias", "gamma", "beta"):
        np.testing.assert_array_equal(after[name], 2.0)


def test_sgd_has_no_decoupled_decay_but_an_l2_loss_term():
    sgd = TinyConfig()
    after = _apply_zero_gradients(make_optimizer(sgd, 0.1))
    np.testing.assert_array_equal(after["kernel"], 2.0)
    assert maskrcnn_kwargs(sgd, "training")["weight_decay"] == pytest.approx(1e-4)
    assert maskrcnn_kwargs(AdamWConfig(), "training")["weight_decay"] == 0.0


def test_unknown_optimizer_is_refused():
    config = TinyConfig()
    config.OPTIMIZER = "adam"
    with pytest.raises(ValueError, match="OPTIMIZER='adam'; use one of"):
        config.validate()


def test_adamw_trains_without_l2_term_and_resumes_its_moments_and_step(tmp_path,
                                                                      synthetic_dataset):
    model = modellib.MaskRCNN("training", AdamWConfig(), str(tmp_path))
    history = model.train(synthetic_dataset, None, 1e-3, 1, "all", verbose=0).history
    assert history["weight_decay_loss"] == [0.0]
    assert np.isfinite(history["loss"][0])
    assert isinstance(model.keras_model.optimizer, keras.optimizers.AdamW)
    with np.load(optimizer_state_path(model.find_last()), allow_pickle=False) as data:
        saved = [data[k] for k in sorted(k for k in data.files if k.startswith("v"))]
    assert saved[0] == AdamWConfig.STEPS_PER_EPOCH  # the step count comes first

    resumed = modellib.MaskRCNN("training", AdamWConfig(), str(tmp_path))
    resumed.load_weights(model.find_last())
    resumed.train(synthetic_dataset, None, 1e-3, 1, "all", verbose=0)  # no step: restore only
    optimizer = resumed.keras_model.optimizer
    restored = [np.asarray(v) for v in optimizer.variables]
    assert len(restored) == len(saved)
    for a, b in zip(restored, saved):
        np.testing.assert_array_equal(a, b)
    # the step count is kept for Adam's bias correction, and the learning rate is still the
    # warm-up's at global step 2 (not step 2 + 2)
    warmed = 1e-3 * (0.001 + 0.999 * 2 / 8)
    assert float(np.asarray(optimizer.learning_rate)) == pytest.approx(warmed, rel=1e-5)

    again = modellib.MaskRCNN("training", AdamWConfig(), str(tmp_path))
    again.load_weights(model.find_last())
    history = again.train(synthetic_dataset, None, 1e-3, 2, "all", verbose=0).history
    assert np.isfinite(history["loss"][0])
    optimizer = again.keras_model.optimizer
    assert int(np.asarray(optimizer.iterations)) == 4
    warmed = 1e-3 * (0.001 + 0.999 * 4 / 8)
    assert float(np.asarray(optimizer.learning_rate)) == pytest.approx(warmed, rel=1e-5)
