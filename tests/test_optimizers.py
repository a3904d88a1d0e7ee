"""Optimizers: AdamW's decoupled weight decay (kernels only), the L2 loss term only under SGD
(hand-computed, and no term at all at AdamW's zero coefficient),
an AdamW run resumed with its moments and step count, and FusedAdamW against Keras's AdamW."""

import keras
import numpy as np
import pytest

from mrcnn import model as modellib
from mrcnn.modeling.factory import maskrcnn_kwargs
from mrcnn.optimizers import FusedAdamW, make_optimizer
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


def test_l2_term_is_hand_computed_and_absent_at_zero_decay():
    import tensorflow as tf
    from mrcnn.losses import l2_weight_decay
    kernel = tf.Variable([[1.0, 2.0], [3.0, 4.0]], name="kernel")
    bias = tf.Variable([5.0, 6.0], name="bias")
    with tf.GradientTape(persistent=True) as tape:
        some = l2_weight_decay([kernel, bias], 0.5)
        zero = l2_weight_decay([kernel, bias], 0.0)
    assert float(some) == pytest.approx(0.5 * (1 + 4 + 9 + 16) / 4)   # biases excluded
    np.testing.assert_allclose(tape.gradient(some, kernel), 0.5 * 2 * kernel.numpy() / 4)
    # AdamW's zero coefficient: no ops on the weights at all (before, a zero term was
    # squared, summed and differentiated for every kernel on every step)
    assert float(zero) == 0.0 and tape.gradient(zero, kernel) is None


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
    assert isinstance(model.keras_model.optimizer, FusedAdamW)
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


def _adamw_steps(optimizer_class, gradients, clipnorm):
    """Three variables (two kernels, a bias) after len(gradients) steps of one optimizer."""
    rng = np.random.default_rng(5)
    variables = [keras.Variable(rng.normal(size=shape).astype("float32"), name=name)
                 for shape, name in (((3, 3, 4, 8), "kernel"), ((8,), "bias"), ((20, 6), "kernel"))]
    optimizer = optimizer_class(learning_rate=0.01, weight_decay=0.1, clipnorm=clipnorm)
    optimizer.exclude_from_weight_decay(var_names=["bias"])
    for step_gradients in gradients:
        optimizer.apply([keras.ops.convert_to_tensor(g) for g in step_gradients], variables)
    return [np.asarray(v) for v in variables], optimizer


@pytest.mark.parametrize("clipnorm", [None, 1.0])
def test_fused_adamw_matches_keras_adamw(clipnorm):
    """Same weights as keras.optimizers.AdamW after four steps whose gradients alternate
    between norms far above and below the clip norm (so the clipping is taken and skipped),
    with the decoupled decay on the kernels only; same optimizer variables (names, shapes,
    order), so saved states load into either; and a config round trip."""
    rng = np.random.default_rng(0)
    shapes = ((3, 3, 4, 8), (8,), (20, 6))
    gradients = [[(rng.normal(size=s) * (3.0 if step % 2 else 0.01)).astype("float32")
                  for s in shapes] for step in range(4)]
    expected, keras_adamw = _adamw_steps(keras.optimizers.AdamW, gradients, clipnorm)
    got, fused = _adamw_steps(FusedAdamW, gradients, clipnorm)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got[0], _adamw_steps(FusedAdamW, gradients[:3], clipnorm)[0][0])
    layout = [(v.name, tuple(v.shape)) for v in fused.variables]
    assert layout == [(v.name, tuple(v.shape)) for v in keras_adamw.variables]
    for a, b in zip(fused.variables, keras_adamw.variables):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    clone = FusedAdamW.from_config(fused.get_config())
    assert (clone.per_tensor_clip_norm, clone.weight_decay, clone.beta_2) == \
        (clipnorm, pytest.approx(0.1), pytest.approx(0.999))


def test_make_optimizer_uses_keras_adamw_under_a_distribution_strategy():
    import tensorflow as tf
    config = AdamWConfig()
    assert isinstance(make_optimizer(config, 1e-3), FusedAdamW)
    assert type(make_optimizer(config, 1e-3, fused=False)) is keras.optimizers.AdamW
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        assert type(make_optimizer(config, 1e-3)) is keras.optimizers.AdamW


def test_fused_adamw_refuses_a_variable_it_was_not_built_for():
    built_for = keras.Variable(np.zeros(3, "float32"), name="kernel")
    other = keras.Variable(np.zeros(3, "float32"), name="kernel")
    optimizer = FusedAdamW(learning_rate=0.1)
    optimizer.build([built_for])
    with pytest.raises(ValueError, match="not built for the variable"):
        optimizer.update_step(keras.ops.ones((3,)), other.value, 0.1)
