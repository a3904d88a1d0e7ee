"""By-name HDF5 weights: round trip, exclude, errors, Matterport nested groups, ResNet-50
ImageNet file loading (from a file the test writes)."""

import h5py
import keras
import numpy as np
import pytest

import backbones
from backbones import resnet
from mrcnn import weights as weights_lib


def _small_model(units=3, name_suffix=""):
    inp = keras.Input((4,))
    x = keras.layers.Dense(5, name="dense_a")(inp)
    x = keras.layers.BatchNormalization(name="bn_a")(x)
    out = keras.layers.Dense(units, name="mrcnn_class_logits")(x)
    return keras.Model(inp, out)


def test_round_trip_and_exclude(tmp_path):
    src, dst = _small_model(), _small_model()
    path = weights_lib.save_weights_by_name(src, tmp_path / "w.weights.h5")
    before = dst.get_layer("mrcnn_class_logits").get_weights()[0].copy()
    report = weights_lib.load_weights_by_name(dst, path, exclude=["mrcnn_class_logits"])
    assert sorted(report["loaded"]) == ["bn_a", "dense_a"]
    np.testing.assert_array_equal(dst.get_layer("dense_a").get_weights()[0],
                                  src.get_layer("dense_a").get_weights()[0])
    np.testing.assert_array_equal(dst.get_layer("mrcnn_class_logits").get_weights()[0], before)


def test_shape_mismatch_names_layer_and_suggests_exclude(tmp_path):
    path = weights_lib.save_weights_by_name(_small_model(3), tmp_path / "w.h5")
    with pytest.raises(ValueError, match="mrcnn_class_logits.*exclude"):
        weights_lib.load_weights_by_name(_small_model(7), path)


def _rpn_like(width, in_channels=8):
    inp = keras.Input((16, 16, in_channels))
    x = keras.layers.Conv2D(width, 3, padding="same", name="rpn_conv_shared")(inp)
    return keras.Model(inp, keras.layers.Conv2D(6, 1, name="rpn_class_raw")(x))


def test_width_mismatch_names_the_config_field(tmp_path):
    """A Matterport-width file into a narrower model says which Config field to set."""
    path = weights_lib.save_weights_by_name(_rpn_like(24), tmp_path / "w.h5")
    with pytest.raises(ValueError, match=r"rpn_conv_shared.*RPN_CONV_CHANNELS = 24"):
        weights_lib.load_weights_by_name(_rpn_like(12), path)
    # Same width, other input channels (another backbone/FPN): the exclude hint, not a width.
    path = weights_lib.save_weights_by_name(_rpn_like(12, in_channels=4), tmp_path / "v.h5")
    with pytest.raises(ValueError, match=r"rpn_conv_shared.*exclude") as err:
        weights_lib.load_weights_by_name(_rpn_like(12), path)
    assert "RPN_CONV_CHANNELS" not in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        weights_lib.load_weights_by_name(_small_model(), tmp_path / "missing.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(ValueError, match="not an HDF5"):
        weights_lib.load_weights_by_name(_small_model(), junk)
    native = tmp_path / "native.weights.h5"
    _small_model().save_weights(native)
    with pytest.raises(ValueError, match="Keras 3 native"):
        weights_lib.load_weights_by_name(_small_model(), native)
    other = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, name="unrelated")])
    path = weights_lib.save_weights_by_name(other, tmp_path / "other.h5")
    with pytest.raises(ValueError, match="no layer of the model matched"):
        weights_lib.load_weights_by_name(_small_model(), path)


def test_atomic_save_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.weights.h5"
    weights_lib.save_weights_by_name(_small_model(), path)
    good = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(h5py.Group, "create_dataset", boom)
    with pytest.raises(OSError):
        weights_lib.save_weights_by_name(_small_model(), path)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.weights.h5"]


def test_matterport_nested_rpn_model_group(tmp_path):
    """Matterport stores the shared RPN as a nested model group 'rpn_model'."""
    inp = keras.Input((8, 8, 4))
    conv = keras.layers.Conv2D(6, 3, padding="same", name="rpn_conv_shared")
    model = keras.Model(inp, conv(inp))
    kernel = np.random.RandomState(0).randn(3, 3, 4, 6).astype(np.float32)
    bias = np.arange(6, dtype=np.float32)
    path = tmp_path / "matterport.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"input_image", b"rpn_model"]
        f.create_group("input_image").attrs["weight_names"] = []
        g = f.create_group("rpn_model")
        g.attrs["weight_names"] = [b"rpn_conv_shared/kernel:0", b"rpn_conv_shared/bias:0"]
        g.create_dataset("rpn_conv_shared/kernel:0", data=kernel)
        g.create_dataset("rpn_conv_shared/bias:0", data=bias)
    weights_lib.load_weights_by_name(model, path)
    np.testing.assert_array_equal(conv.get_weights()[0], kernel)
    np.testing.assert_array_equal(conv.get_weights()[1], bias)


def test_resnet50_imagenet_file_loads_by_name(tmp_path, monkeypatch):
    """The classic notop file layout: write one from a model with the same names, then have
    weights='imagenet' pick it up instead of downloading."""
    _, reference = backbones.build_backbone("resnet50", keras.Input((64, 64, 3)))
    path = weights_lib.save_weights_by_name(reference, tmp_path / resnet.RESNET50_NOTOP_URL
                                            .rsplit("/", 1)[-1])
    monkeypatch.setattr(resnet, "download_file", lambda url, md5=None: str(path))
    _, model = backbones.build_backbone("resnet50", keras.Input((64, 64, 3)), weights="imagenet")
    for name in ("conv1", "res3a_branch2a", "bn5c_branch2c"):
        for a, b in zip(model.get_layer(name).get_weights(),
                        reference.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)


def test_weights_cross_backbone_norms(tmp_path):
    """A file saved under BatchNorm loads into the GroupNorm build where shapes agree (every
    convolution), and a strict load names the first normalisation layer that differs."""
    inp = keras.Input((64, 64, 3))
    _, bn_model = backbones.build_backbone("mobilenet_v2", inp, norm="frozen")
    path = weights_lib.save_weights_by_name(bn_model, tmp_path / "bn.weights.h5")
    _, gn_model = backbones.build_backbone("mobilenet_v2", keras.Input((64, 64, 3)), norm="group")
    with pytest.raises(ValueError, match=r"'bn_Conv1'.*BatchNormalization.*GroupNormalization"
                                         r".*skip_mismatch=True"):
        weights_lib.load_weights_by_name(gn_model, path)
    report = weights_lib.load_weights_by_name(gn_model, path, skip_mismatch=True)
    gn_names = {l.name for l in gn_model.layers if isinstance(l, keras.layers.GroupNormalization)}
    assert set(report["skipped"]) == gn_names and not report["missing"]
    conv = "block_3_expand"
    np.testing.assert_array_equal(gn_model.get_layer(conv).get_weights()[0],
                                  bn_model.get_layer(conv).get_weights()[0])
    # and back: a GroupNorm file into the BatchNorm build
    gn_path = weights_lib.save_weights_by_name(gn_model, tmp_path / "gn.weights.h5")
    with pytest.raises(ValueError, match="GroupNormalization.*BatchNormalization"):
        weights_lib.load_weights_by_name(bn_model, gn_path)


def test_average_weight_files_is_the_mean_and_refuses_other_models(tmp_path):
    """Three checkpoints of one model average element-wise (kernels, BatchNorm moving
    statistics); a file of another architecture is named in the error and nothing is written."""
    models = [_small_model() for _ in range(3)]
    for i, model in enumerate(models):   # distinct moving statistics, not only kernels
        bn = model.get_layer("bn_a")
        bn.set_weights([w + i for w in bn.get_weights()])
    paths = [weights_lib.save_weights_by_name(m, tmp_path / f"c{i}.weights.h5")
             for i, m in enumerate(models)]
    out = weights_lib.average_weight_files(paths, tmp_path / "avg.weights.h5")
    target = _small_model()
    report = weights_lib.load_weights_by_name(target, out)
    assert sorted(report["loaded"]) == ["bn_a", "dense_a", "mrcnn_class_logits"]
    for name in ("dense_a", "bn_a", "mrcnn_class_logits"):
        for k, got in enumerate(target.get_layer(name).get_weights()):
            expected = np.mean([m.get_layer(name).get_weights()[k] for m in models], axis=0)
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    other = weights_lib.save_weights_by_name(_small_model(units=7), tmp_path / "other.weights.h5")
    with pytest.raises(ValueError, match="other.weights.h5 does not hold the same weights"):
        weights_lib.average_weight_files(paths + [other], tmp_path / "bad.weights.h5")
    assert not (tmp_path / "bad.weights.h5").exists()
    with pytest.raises(ValueError, match="no weight file"):
        weights_lib.average_weight_files([], tmp_path / "none.weights.h5")
