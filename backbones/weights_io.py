"""Weights by layer name: reading the classic Keras/Matterport HDF5 layout.

Keras 3 native ``.weights.h5`` files are keyed by object structure (``layers/conv2d/vars/0``),
not by layer name, and Keras 3's by-name loader for legacy files is private and buggy
(keras-team/keras #19694, #20536, #21676). Backbones (the classic ImageNet ResNet-50 file) and
Mask R-CNN (training and inference graphs differ, ``exclude=[...]``, Matterport's COCO/nucleus
files) both need by-name loading, so the reader lives here, below both; writing is in
:mod:`mrcnn.weights`. The layout: root attribute ``layer_names``; one group per layer with
attribute ``weight_names`` listing its datasets in weight order.
"""

import os
import re

import h5py
import keras
import numpy as np


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


# A normalisation layer's arrays: BatchNorm has gamma, beta and the two moving statistics;
# GroupNorm gamma and beta (see backbones.normalization).
_NORM_KIND = {4: "BatchNormalization (BACKBONE_NORM 'batch' or 'frozen')",
              2: "GroupNormalization (BACKBONE_NORM 'group')"}


def _mismatch_hint(layer_name, file_shapes, model_shapes):
    """What to do about a layer whose shapes differ from the file's: another normalisation,
    or another NUM_CLASSES / backbone (exclude the layer)."""
    if (len(file_shapes) != len(model_shapes) and len(file_shapes) in _NORM_KIND
            and len(model_shapes) in _NORM_KIND
            and all(len(s) == 1 for s in file_shapes + model_shapes)):
        return (f"The file's {layer_name!r} is a {_NORM_KIND[len(file_shapes)]} but the model's "
                f"is a {_NORM_KIND[len(model_shapes)]}: build the model with the file's "
                "normalisation, or load with skip_mismatch=True to take only the layers whose "
                "shapes agree (the convolutions).")
    return (f"If the file was trained with another NUM_CLASSES or backbone, pass "
            f"exclude=[{layer_name!r}, ...].")


def load_weights_by_name(model, path, exclude=None, skip_mismatch=False,
                          mismatch_hint=None, layer_set_check=None):
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
        mismatch_hint: ``fn(layer_name, file_shapes, model_shapes) -> str or None``, a fix
            for a shape mismatch to put in the error (mrcnn names its Config width fields);
            the normalisation and ``exclude`` hints are the fallback.
        layer_set_check: ``fn(model_layer_names, file_layer_names) -> str or None``, run on
            the two name sets before any weight is assigned; a string is raised as the error
            (for layers whose shapes agree either way but whose presence must match).

    Returns:
        dict with ``loaded`` (layer names set), ``missing`` (layers with weights the file
        lacks) and ``skipped`` (layers whose shapes differ, with ``skip_mismatch``).

    Raises:
        ValueError: a shape mismatch (naming the layer, both shapes and what fixes it), or no
            layer matched.
    """
    stored = read_weights_by_name(path)
    patterns = [re.compile(e) for e in (exclude or [])]
    if layer_set_check is not None:
        problem = layer_set_check({layer.name for layer in flat_layers(model)
                                   if not any(p.fullmatch(layer.name) for p in patterns)},
                                  set(stored))
        if problem:
            raise ValueError(f"{path}: {problem}")
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
                f"{expected}. " + ((mismatch_hint and mismatch_hint(layer.name, got, expected))
                                   or _mismatch_hint(layer.name, got, expected)))
        for w, v in zip(layer.weights, values):
            w.assign(v)
        loaded.append(layer.name)
    if not loaded:
        raise ValueError(f"{path}: no layer of the model matched a layer name in the file; is it "
                         "a weights file for this model and backbone?")
    return {"loaded": loaded, "missing": missing, "skipped": skipped}


def download_file(url, md5_hash=None):
    """Download (or find in ~/.keras/models) a weights file; clear error when offline."""
    fname = url.rsplit("/", 1)[-1]
    try:
        return keras.utils.get_file(fname, url, cache_subdir="models", file_hash=md5_hash)
    except Exception as err:
        raise RuntimeError(
            f"could not download {fname} from {url} ({type(err).__name__}: {err}). This machine "
            f"may be offline: place the file at ~/.keras/models/{fname}, or use weights=None."
        ) from err
