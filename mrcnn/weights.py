"""Weights by layer name: our own small HDF5 reader/writer.

Keras 3 native ``.weights.h5`` files are keyed by object structure (``layers/conv2d/vars/0``),
not by layer name, and Keras 3's by-name loader for legacy files is private and buggy
(keras-team/keras #19694, #20536, #21676). Mask R-CNN needs by-name loading: training and
inference graphs differ, users fine-tune with ``exclude=[...]``, and Matterport's COCO/nucleus
``.h5`` files and the classic ImageNet ResNet-50 file are in the classic layout. So this module
reads and writes that classic layout: root attribute ``layer_names``; one group per layer with
attribute ``weight_names`` listing its datasets in weight order.
"""

import os
import re

import h5py
import keras
import numpy as np

from mrcnn.atomic import atomic_target


def flat_layers(model):
    """Every leaf layer of a (possibly nested) model, in order."""
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.extend(flat_layers(layer))
        else:
            out.append(layer)
    return out


def _decode(names):
    return [n.decode("utf8") if isinstance(n, bytes) else str(n) for n in names]


def save_weights_by_name(model, path):
    """Write every layer's weights to ``path`` atomically (temp file, then rename).

    A crash mid-write leaves any earlier file at ``path`` intact.
    """
    path = os.fspath(path)
    with atomic_target(path, ".h5.tmp") as tmp:
        with h5py.File(tmp, "w") as f:
            names = []
            for layer in flat_layers(model):
                if not layer.weights or layer.name in names:
                    continue
                names.append(layer.name)
                group = f.create_group(layer.name)
                weight_names = []
                for i, w in enumerate(layer.weights):
                    wname = f"{layer.name}/{i}_{w.name}"
                    group.create_dataset(wname, data=keras.ops.convert_to_numpy(w))
                    weight_names.append(wname.encode("utf8"))
                group.attrs["weight_names"] = weight_names
            f.attrs["layer_names"] = [n.encode("utf8") for n in names]
            f.attrs["backend"] = b"tensorflow"
            f.attrs["keras_version"] = keras.__version__.encode("utf8")
            f.attrs["mrcnn_format"] = 1
    return path


def read_weights_by_name(path):
    """Read a classic-layout HDF5 file -> {layer_name: [np.ndarray, ...]}.

    Groups that hold a nested model (Matterport's ``rpn_model``) are split by the first path
    component of their weight names, so shared layers inside them load by their own names.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not HDF5, or a Keras 3 native file (structure-keyed, not name-keyed).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path} is not an HDF5 weights file ({err}).") from err
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in root.attrs:
            if "layers" in root and "vars" in root:
                raise ValueError(
                    f"{path} is a Keras 3 native weights file, keyed by model structure, not by "
                    "layer name; load it with by_name=False into the same architecture.")
            raise ValueError(f"{path} has no 'layer_names' attribute: not a Keras/Matterport "
                             "HDF5 weights file.")
        out = {}
        for group_name in _decode(root.attrs["layer_names"]):
            group = root[group_name]
            weight_names = _decode(group.attrs.get("weight_names", []))
            if not weight_names:
                continue
            out[group_name] = [np.asarray(group[w]) for w in weight_names]
            by_prefix = {}
            for w in weight_names:
                by_prefix.setdefault(w.split("/")[0], []).append(np.asarray(group[w]))
            for prefix, values in by_prefix.items():
                if prefix != group_name:
                    out.setdefault(prefix, values)
        return out


# Layers whose widths are Config fields: (layer-name regex, field, which kernel axis holds it).
# A mismatch there means the file was trained with another width, not another dataset.
_WIDTH_FIELDS = (
    (r"rpn_conv_shared", "RPN_CONV_CHANNELS", -1),
    (r"rpn_(class_raw|bbox_pred)", "RPN_CONV_CHANNELS", -2),
    (r"fpn_(c\dp\d|p\d)", "TOP_DOWN_PYRAMID_SIZE", -1),
    (r"mrcnn_mask_(conv\d|deconv)", "MASK_HEAD_CHANNELS", -1),
    (r"mrcnn_class_conv\d", "FPN_CLASSIF_FC_LAYERS_SIZE", -1),
)


# A normalisation layer's arrays: BatchNorm has gamma, beta and the two moving statistics;
# GroupNorm gamma and beta (see backbones.normalization).
_NORM_KIND = {4: "BatchNormalization (BACKBONE_NORM 'batch' or 'frozen')",
              2: "GroupNormalization (BACKBONE_NORM 'group')"}


def _mismatch_hint(layer_name, file_shapes, model_shapes):
    """The Config change that makes ``layer_name`` match the file, or the exclude hint."""
    if (len(file_shapes) != len(model_shapes) and len(file_shapes) in _NORM_KIND
            and len(model_shapes) in _NORM_KIND
            and all(len(s) == 1 for s in file_shapes + model_shapes)):
        return (f"The file's {layer_name!r} is a {_NORM_KIND[len(file_shapes)]} but the model's "
                f"is a {_NORM_KIND[len(model_shapes)]}: build the model with the file's "
                "normalisation, or load with skip_mismatch=True to take only the layers whose "
                "shapes agree (the convolutions).")
    for pattern, field, axis in _WIDTH_FIELDS:
        if (re.fullmatch(pattern, layer_name) and len(file_shapes[0]) >= 2
                and len(file_shapes[0]) == len(model_shapes[0])
                and file_shapes[0][axis] != model_shapes[0][axis]):
            return (f"The file was trained with {field} = {file_shapes[0][axis]}: set that in "
                    f"your Config (Matterport's files use RPN_CONV_CHANNELS = 512, "
                    f"TOP_DOWN_PYRAMID_SIZE = 256, MASK_HEAD_CHANNELS = 256, "
                    f"FPN_CLASSIF_FC_LAYERS_SIZE = 1024).")
    return (f"If the file was trained with another NUM_CLASSES or backbone, pass "
            f"exclude=[{layer_name!r}, ...].")


def load_weights_by_name(model, path, exclude=None, skip_mismatch=False):
    """Assign weights from ``path`` to the layers of ``model`` that share a name.

    Args:
        model: keras.Model (nested models are walked).
        path: classic-layout HDF5 file (ours, Matterport's, keras.applications' legacy files).
        exclude: layer names (or regexes) to leave untouched, e.g. the class-specific heads
            ``["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask"]`` when the
            file was trained with another NUM_CLASSES.
        skip_mismatch: skip layers whose shapes differ instead of raising (they are listed
            in the result's ``skipped``), e.g. to take the convolutions of a BatchNorm
            checkpoint into a GroupNorm model.

    Returns:
        dict with ``loaded`` (layer names set), ``missing`` (layers with weights the file
        lacks) and ``skipped`` (layers whose shapes differ, with ``skip_mismatch``).

    Raises:
        ValueError: a shape mismatch (naming the layer, both shapes and the Config width field
            or ``exclude`` that fixes it), or no layer matched.
    """
    stored = read_weights_by_name(path)
    patterns = [re.compile(e) for e in (exclude or [])]
    loaded, missing, skipped = [], [], []
    for layer in flat_layers(model):
        if not layer.weights:
            continue
        if any(p.fullmatch(layer.name) for p in patterns):
            continue
        values = stored.get(layer.name)
        if values is None:
            missing.append(layer.name)
            continue
        expected = [tuple(w.shape) for w in layer.weights]
        got = [tuple(v.shape) for v in values]
        if expected != got:
            if skip_mismatch:
                skipped.append(layer.name)
                continue
            raise ValueError(
                f"{path}: layer {layer.name!r} has weights of shapes {got} but the model expects "
                f"{expected}. " + _mismatch_hint(layer.name, got, expected))
        for w, v in zip(layer.weights, values):
            w.assign(v)
        loaded.append(layer.name)
    if not loaded:
        raise ValueError(f"{path}: no layer of the model matched a layer name in the file; is it "
                         "a weights file for this model and backbone?")
    return {"loaded": loaded, "missing": missing, "skipped": skipped}


# Matterport's Mask R-CNN COCO weights (ResNet-101 backbone, 81 classes).
COCO_WEIGHTS_URL = "https://github.com/matterport/Mask_RCNN/releases/download/v2.0/mask_rcnn_coco.h5"


def download_weights(url, md5_hash=None):
    """Download (or find in ~/.keras/models) a weights file; clear error when offline."""
    fname = url.rsplit("/", 1)[-1]
    try:
        return keras.utils.get_file(fname, url, cache_subdir="models", file_hash=md5_hash)
    except Exception as err:
        raise RuntimeError(
            f"could not download {fname} from {url} ({type(err).__name__}: {err}). This machine "
            f"may be offline: place the file at ~/.keras/models/{fname}, or use weights=None."
        ) from err
