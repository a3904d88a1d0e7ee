"""Backbone registry: every backbone builds with the declared strides, regexes match real
layer names, errors for unknown and duplicate names, user registration."""

import math
import re

import keras
import numpy as np
import pytest

import backbones
from mrcnn.training import HEADS_REGEX, layers_regex


@pytest.mark.parametrize("name", [n for n in backbones.list_backbones() if n != "tiny_test"])
def test_backbone_builds_with_strides_and_regexes(name):
    spec, model = backbones.build_backbone(name, keras.Input((128, 128, 3)))
    for i, tap in enumerate(("C2", "C3", "C4", "C5")):
        shape = model.output[tap].shape
        assert shape[1] == 128 // spec.strides[i], (tap, shape)
        assert shape[-1] == spec.channels[i], (tap, shape)
    names = [layer.name for layer in model.layers if layer.weights]
    selected = {}
    for stage in ("3+", "4+", "5+"):
        regex = re.compile(layers_regex(spec, stage))
        selected[stage] = {n for n in names if regex.fullmatch(n)}
        assert selected[stage], f"{name} {stage} matches no layer"
    assert selected["5+"] < selected["4+"] < selected["3+"] < set(names)
    # The layer producing C2 belongs to stage 2, never to 3+.
    c2_layer = model.get_layer(spec.taps["C2"])
    assert c2_layer.name not in selected["3+"]
    # Heads are not part of the backbone.
    assert not any(re.fullmatch(HEADS_REGEX, n) for n in names)


def test_frozen_batchnorm_by_default():
    _, model = backbones.build_backbone("resnet50", keras.Input((64, 64, 3)), train_bn=False)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and not any(layer.trainable for layer in bns)


def test_small_batch_norm_warning_only_for_trainable_batchnorm_on_small_batches():
    from mrcnn.config import Config
    from mrcnn.modeling.factory import SMALL_BATCH_NORM_BATCH, small_batch_norm_warning

    def config(**fields):
        c = Config()
        for key, value in fields.items():
            setattr(c, key, value)
        return c
    warning = small_batch_norm_warning(config(TRAIN_BN=True, IMAGES_PER_GPU=2))
    assert "batches of 2 image(s)" in warning and "BACKBONE_NORM='group'" in warning
    assert small_batch_norm_warning(config(BACKBONE_NORM="batch", IMAGES_PER_GPU=1))
    assert small_batch_norm_warning(
        config(TRAIN_BN=True, IMAGES_PER_GPU=SMALL_BATCH_NORM_BATCH)) is None
    assert small_batch_norm_warning(config(TRAIN_BN=False, IMAGES_PER_GPU=1)) is None
    assert small_batch_norm_warning(config(BACKBONE_NORM="group", IMAGES_PER_GPU=1)) is None
    assert small_batch_norm_warning(config(BACKBONE="resnet18_gn", TRAIN_BN=True)) is None


MISSION = ["resnet18", "resnet34", "resnet50", "resnet101", "mobilenet", "mobilenet_v2",
           "densenet121", "densenet169", "densenet201"]


def _weighted_names(model):
    return [layer.name for layer in model.layers if layer.weights]


def _norm_layers(model, kind):
    return [layer for layer in model.layers if isinstance(layer, kind)]


@pytest.mark.parametrize("name", MISSION)
def test_every_backbone_honours_every_norm(name):
    """Same strides, channels and layer names under every norm; "group" leaves no BatchNorm
    and each group count divides its layer's channels; BatchNorm trains only under "batch"."""
    built = {norm: backbones.build_backbone(name, keras.Input((64, 64, 3)), norm=norm)[1]
             for norm in backbones.NORMS}
    spec = backbones.get_backbone_spec(name)
    bn_count = len(_norm_layers(built["frozen"], keras.layers.BatchNormalization))
    assert bn_count > 0
    for norm, model in built.items():
        for i, tap in enumerate(("C2", "C3", "C4", "C5")):
            assert model.output[tap].shape[1] == 64 // spec.strides[i], (norm, tap)
            assert model.output[tap].shape[-1] == spec.channels[i], (norm, tap)
        assert _weighted_names(model) == _weighted_names(built["frozen"]), norm
        bns = _norm_layers(model, keras.layers.BatchNormalization)
        gns = _norm_layers(model, keras.layers.GroupNormalization)
        if norm == "group":
            assert not bns and len(gns) == bn_count
            for layer in gns:
                channels = layer.input.shape[-1]
                assert channels % layer.groups == 0 and layer.groups == math.gcd(32, channels)
                assert layer.trainable
        else:
            assert len(bns) == bn_count and not gns
            assert all(layer.trainable == (norm == "batch") for layer in bns)


def _keras_and_fast_group_norm(shape, groups, dtype, rng):
    """keras.layers.GroupNormalization and FastGroupNormalization built for ``shape`` with
    the same random gamma and beta."""
    reference = keras.layers.GroupNormalization(groups=groups, dtype=dtype)
    fast = backbones.normalization.FastGroupNormalization(groups=groups, dtype=dtype)
    reference.build(shape)
    fast.build(shape)
    reference.set_weights([rng.normal(size=shape[-1]), rng.normal(size=shape[-1])])
    fast.set_weights(reference.get_weights())
    return reference, fast


@pytest.mark.parametrize("shape,groups,dtype", [((2, 9, 7, 24), 8, "float32"),
                                                ((1, 16, 12, 64), 32, "float32"),
                                                ((3, 5, 6, 7), 1, "float32"),
                                                ((2, 8, 8, 48), 16, "mixed_bfloat16")])
def test_fast_group_norm_equals_keras_group_norm(shape, groups, dtype):
    """Same output and gradients (input, gamma, beta) as keras.layers.GroupNormalization with
    the same weights, on inputs far from zero mean (where a one-pass variance would drift)."""
    import numpy as np
    import tensorflow as tf
    rng = np.random.default_rng(0)
    x = tf.constant((rng.normal(size=shape) * 3 + 20).astype("float32"))
    reference, fast = _keras_and_fast_group_norm(shape, groups, dtype, rng)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        outputs = {name: layer(x) for name, layer in (("ref", reference), ("fast", fast))}
        losses = {k: tf.reduce_sum(tf.sin(tf.cast(v, "float32"))) for k, v in outputs.items()}
    assert outputs["fast"].dtype == outputs["ref"].dtype
    tolerance = 1e-5 if dtype == "float32" else 2e-2
    np.testing.assert_allclose(np.float32(outputs["fast"]), np.float32(outputs["ref"]),
                               atol=tolerance * 5)
    for name in ("x", "gamma", "beta"):
        grads = [tape.gradient(losses[k], x if name == "x" else getattr(layer, name))
                 for k, layer in (("ref", reference), ("fast", fast))]
        scale = float(np.abs(grads[0]).max()) + 1.0
        np.testing.assert_allclose(np.float32(grads[1]), np.float32(grads[0]),
                                   atol=tolerance * 20 * scale, err_msg=name)


@pytest.mark.parametrize("shape,groups,dtype", [((1, 16, 12, 64), 32, "float32"),
                                                ((2, 9, 7, 64), 32, "float32"),
                                                ((1, 1, 1, 8), 4, "float32"),
                                                ((1, 8, 8, 48), 16, "mixed_bfloat16")])
def test_fast_group_norm_at_inference_equals_keras_group_norm(shape, groups, dtype):
    """At inference (training=False) a single image takes the fused FusedBatchNorm path and
    a batch of two the per-channel one, inside one graph whose batch size is unknown; both
    give keras.layers.GroupNormalization's result, also for inputs far from zero mean and
    for a 1x1 feature map (variance 0)."""
    import numpy as np
    import tensorflow as tf
    rng = np.random.default_rng(1)
    x = (rng.normal(size=shape) * 3 + 20).astype("float32")
    x[..., 0] = 7.0                                    # one constant channel
    reference, fast = _keras_and_fast_group_norm(shape, groups, dtype, rng)
    spec = tf.TensorSpec((None,) + shape[1:], "float32")
    at_inference = tf.function(lambda t: fast(t, training=False), input_signature=[spec])
    graph_def = at_inference.get_concrete_function().graph.as_graph_def()
    fused = [node for function in graph_def.library.function for node in function.node_def
             if node.op == "FusedBatchNormV3"]               # inside the tf.cond branch
    assert fused, "the single-image branch is missing from the inference graph"
    expected = np.float32(reference(x))
    tolerance = 1e-4 if dtype == "float32" else 5e-2
    got = at_inference(tf.constant(x))
    assert got.dtype == reference.compute_dtype
    np.testing.assert_allclose(np.float32(got), expected, atol=tolerance)
    np.testing.assert_allclose(np.float32(fast(x, training=True)), expected, atol=tolerance)


def test_group_norm_backbones_use_the_fast_group_norm():
    _, model = backbones.build_backbone("mobilenet_v2", keras.Input((64, 64, 3)), norm="group")
    gns = _norm_layers(model, keras.layers.GroupNormalization)
    assert gns and all(isinstance(layer, backbones.normalization.FastGroupNormalization)
                       for layer in gns)


def test_group_norm_backbone_saves_and_loads_in_safe_mode(tmp_path):
    import numpy as np
    inputs = keras.Input((32, 32, 3))
    _, backbone = backbones.build_backbone("resnet18", inputs, norm="group")
    model = keras.Model(inputs, backbone.output["C3"])
    x = np.random.default_rng(0).random((1, 32, 32, 3)).astype("float32")
    model.save(tmp_path / "gn.keras")
    loaded = keras.models.load_model(tmp_path / "gn.keras", safe_mode=True)
    assert any(isinstance(layer, backbones.normalization.FastGroupNormalization)
               for layer in loaded.layers)
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-5)


def test_group_count_rule():
    assert [backbones.group_count(c) for c in (24, 144, 96, 16, 1280, 64, 2048, 17, 8)] == \
        [8, 16, 32, 16, 32, 32, 32, 1, 8]
    with pytest.raises(ValueError):
        backbones.group_count(0)


def test_gn_names_are_group_norm_aliases():
    import numpy as np
    _, bn = backbones.build_backbone("resnet18", keras.Input((64, 64, 3)), train_bn=False)
    _, gn = backbones.build_backbone("resnet18_gn", keras.Input((64, 64, 3)), train_bn=False)
    assert _weighted_names(bn) == _weighted_names(gn)
    norms = _norm_layers(gn, keras.layers.GroupNormalization)
    assert len(norms) == 20 and all(layer.trainable for layer in norms)
    assert backbones.get_backbone_spec("resnet18_gn").norm == "group"
    _, same = backbones.build_backbone("resnet18_gn", keras.Input((64, 64, 3)), norm="group")
    assert _weighted_names(same) == _weighted_names(gn)
    with pytest.raises(ValueError, match="always uses norm 'group'.*BACKBONE='resnet18'"):
        backbones.build_backbone("resnet18_gn", keras.Input((64, 64, 3)), norm="batch")
    # per-image: an image's features do not depend on the other images in the batch
    rng = np.random.RandomState(0)
    a, b = rng.rand(1, 64, 64, 3), 50 * rng.rand(1, 64, 64, 3)
    alone = gn(a, training=True)["C3"]
    together = gn(np.concatenate([a, b]), training=True)["C3"][:1]
    np.testing.assert_allclose(alone, together, atol=1e-4)


def _zero_gamma_names(model):
    return [layer.name for layer in model.layers if getattr(layer, "gamma", None) is not None
            and not np.any(keras.ops.convert_to_numpy(layer.gamma))]


@pytest.mark.parametrize("name, blocks", [("resnet18", 8), ("resnet50", 16)])
def test_zero_init_residual_starts_every_block_as_the_identity(name, blocks):
    """Zeroed gamma in exactly the norm ending each residual branch (one per block), none
    elsewhere, under "group" and "batch"; so a block's output equals its (non-negative) input:
    res2b_out == res2a_out. (Probed under "batch", whose graph is the builder's own: the
    "group" graph is a clone sharing the other layers, whose ``.output`` is the first graph's.)"""
    _, grouped = backbones.build_backbone(name, keras.Input((64, 64, 3)), norm="group",
                                          zero_init_residual=True)
    image = keras.Input((64, 64, 3))
    _, batch = backbones.build_backbone(name, image, norm="batch", zero_init_residual=True)
    for model in (grouped, batch):
        zeroed = _zero_gamma_names(model)
        assert len(zeroed) == blocks
        assert all(re.fullmatch(r"bn\d[a-z]_branch2[bc]", n) for n in zeroed), zeroed
    probe = keras.Model(image, [batch.get_layer("res2a_out").output,
                                batch.get_layer("res2b_out").output])
    first, second = probe(np.random.default_rng(0).normal(size=(1, 64, 64, 3)))
    assert np.any(keras.ops.convert_to_numpy(first) > 0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(second),
                               keras.ops.convert_to_numpy(first), rtol=1e-6)
    _, plain = backbones.build_backbone(name, keras.Input((64, 64, 3)), norm="group",
                                        zero_init_residual=False)
    assert not _zero_gamma_names(plain)


def test_zero_init_residual_default_is_the_backbones_own():
    """None (the default): on for the bottleneck ResNets under a trainable norm, off for the
    basic-block ones and under "frozen"; True/False override it."""
    def zeroed(name, norm, choice=None):
        _, model = backbones.build_backbone(name, keras.Input((64, 64, 3)), norm=norm,
                                            zero_init_residual=choice)
        return len(_zero_gamma_names(model))

    assert zeroed("resnet50", "group") == 16 and zeroed("resnet101", "batch") == 33
    assert zeroed("resnet50", "frozen") == 0 and zeroed("resnet50", "group", False) == 0
    assert zeroed("resnet18", "group") == 0 and zeroed("resnet18", "group", True) == 8
    with pytest.raises(ValueError, match="zero_init_residual needs residual_norms"):
        backbones.register_backbone("no_norms", taps={c: c for c in ("C2", "C3", "C4", "C5")},
                                    zero_init_residual=True)


def test_zero_init_residual_refuses_frozen_norm_and_skips_plain_backbones():
    with pytest.raises(ValueError, match="zero_init_residual needs a trainable"):
        backbones.build_backbone("resnet18", keras.Input((64, 64, 3)), norm="frozen",
                                 zero_init_residual=True)
    # DenseNet adds no shortcut: nothing to zero, every gamma stays 1.
    _, model = backbones.build_backbone("densenet121", keras.Input((64, 64, 3)), norm="group",
                                        zero_init_residual=True)
    assert not _zero_gamma_names(model)


def test_config_zero_init_residual_reaches_the_training_model():
    from mrcnn.modeling.factory import build_maskrcnn
    from tests.conftest import TinyConfig

    config = TinyConfig()
    config.BACKBONE, config.BACKBONE_NORM, config.BACKBONE_ZERO_INIT_RESIDUAL = \
        "resnet18", "group", True
    model = build_maskrcnn(config.validate(), "training")
    assert _zero_gamma_names(model) == [f"bn{s}{b}_branch2b" for s in "2345" for b in "ab"]


def test_unknown_norm_is_refused():
    with pytest.raises(ValueError, match="unknown backbone normalisation 'layer'"):
        backbones.build_backbone("resnet18", keras.Input((64, 64, 3)), norm="layer")


def test_subclassed_backbone_cannot_swap_its_batchnorm():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv2D(8, 3, strides=4, padding="same")
            self.bn = keras.layers.BatchNormalization()

        def call(self, x):
            c2 = self.bn(self.conv(x))
            return {"C2": c2, "C3": c2, "C4": c2, "C5": c2}

    def subclassed(input_tensor, *, train_bn, weights):
        net = Net()
        net(input_tensor)
        return net

    spec = backbones.get_backbone_spec(subclassed)
    model = spec.builder(keras.Input((64, 64, 3)), train_bn=False, weights=None)
    with pytest.raises(ValueError, match="cannot use normalisation 'group'.*functional"):
        backbones.apply_norm(model, "group", "subclassed")


def test_unknown_backbone_lists_registered_names():
    with pytest.raises(ValueError, match="resnet50.*") as err:
        backbones.get_backbone_spec("resnet5O")
    assert "mobilenet_v2" in str(err.value)


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        backbones.register_backbone("resnet50", taps={f"C{i}": "x" for i in range(2, 6)})


def test_register_requires_c2_to_c5():
    with pytest.raises(ValueError, match="C2, C3, C4 and C5"):
        backbones.register_backbone("broken", taps={"C2": "a", "C3": "b"})


def test_callable_backbone_spec_has_no_stage_regex():
    def my_backbone(input_tensor, *, train_bn, weights):
        raise NotImplementedError
    spec = backbones.get_backbone_spec(my_backbone)
    assert layers_regex(spec, "heads") == HEADS_REGEX and layers_regex(spec, "all") == ".*"
    with pytest.raises(ValueError, match="declares no regex"):
        layers_regex(spec, "3+")


def test_imagenet_offline_error_is_clear(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network unreachable")
    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(RuntimeError, match="offline"):
        backbones.build_backbone("resnet50", keras.Input((64, 64, 3)), weights="imagenet")
    with pytest.raises(RuntimeError, match="offline"):
        backbones.build_backbone("mobilenet_v2", keras.Input((64, 64, 3)), weights="imagenet")
