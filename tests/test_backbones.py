"""Backbone registry: every backbone builds with the declared strides, regexes match real
layer names, errors for unknown and duplicate names, user registration."""

import re

import keras
import pytest

import backbones
from backbones import HEADS_REGEX


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
        regex = re.compile(spec.layers_regex(stage))
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


def test_groupnorm_twin_has_the_same_layer_names_and_per_image_normalisation():
    import numpy as np
    _, bn = backbones.build_backbone("resnet18", keras.Input((64, 64, 3)), train_bn=False)
    _, gn = backbones.build_backbone("resnet18_gn", keras.Input((64, 64, 3)), train_bn=False)
    weighted = lambda m: [l.name for l in m.layers if l.weights]  # noqa: E731
    assert weighted(bn) == weighted(gn)
    norms = [l for l in gn.layers if isinstance(l, keras.layers.GroupNormalization)]
    assert len(norms) == 20 and all(l.trainable for l in norms)
    # per-image: an image's features do not depend on the other images in the batch
    rng = np.random.RandomState(0)
    a, b = rng.rand(1, 64, 64, 3), 50 * rng.rand(1, 64, 64, 3)
    alone = gn(a, training=True)["C3"]
    together = gn(np.concatenate([a, b]), training=True)["C3"][:1]
    np.testing.assert_allclose(alone, together, atol=1e-4)


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
    assert spec.layers_regex("heads") == HEADS_REGEX and spec.layers_regex("all") == ".*"
    with pytest.raises(ValueError, match="declares no regex"):
        spec.layers_regex("3+")


def test_imagenet_offline_error_is_clear(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network unreachable")
    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(RuntimeError, match="offline"):
        backbones.build_backbone("resnet50", keras.Input((64, 64, 3)), weights="imagenet")
    with pytest.raises(RuntimeError, match="offline"):
        backbones.build_backbone("mobilenet_v2", keras.Input((64, 64, 3)), weights="imagenet")
