"""Weight files by layer name for Mask R-CNN: writing (atomic), loading with hints that name
the Config width a file was trained with, Matterport's COCO file.

Reading the classic Keras/Matterport HDF5 layout lives below both packages, in
:mod:`backbones.weights_io` (backbones load the classic ImageNet ResNet-50 file with it);
this module re-exports it. Keras 3 native ``.weights.h5`` files are keyed by object structure,
not by layer name, and Keras 3's by-name loader for legacy files is private and buggy
(keras-team/keras #19694, #20536, #21676), hence our own.
"""

import os
import re

import h5py
import keras
import numpy as np

from backbones import weights_io
from backbones.weights_io import flat_layers, read_weights_by_name  # noqa: F401  (re-exports)
from mrcnn.atomic import atomic_target


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


# Layers whose widths are Config fields: (layer-name regex, field, which kernel axis holds it).
# A mismatch there means the file was trained with another width, not another dataset.
_WIDTH_FIELDS = (
    (r"rpn_conv_shared", "RPN_CONV_CHANNELS", -1),
    (r"rpn_(class_raw|bbox_pred)", "RPN_CONV_CHANNELS", -2),
    (r"fpn_(c\dp\d|p\d)", "TOP_DOWN_PYRAMID_SIZE", -1),
    (r"mrcnn_mask_(conv\d|deconv)", "MASK_HEAD_CHANNELS", -1),
    (r"mrcnn_class_conv\d", "FPN_CLASSIF_FC_LAYERS_SIZE", -1),
)

# The layers SEPARABLE_PYRAMID_CONVS makes depthwise-separable (3 weights instead of 2), and
# the values under which each is separable / full.
_SEPARABLE_LAYERS = (
    (r"fpn_p[2-5]", "True", "False or 'rpn'"),
    (r"rpn_conv_shared", "'rpn' or True", "False"),
)


def _width_hint(layer_name, file_shapes, model_shapes):
    """The Config field (a width, BOX_HEAD_CONTEXT, SEPARABLE_PYRAMID_CONVS) that makes
    ``layer_name`` match the file, or None."""
    for pattern, if_separable, if_full in _SEPARABLE_LAYERS:
        if (re.fullmatch(pattern, layer_name)
                and {len(file_shapes), len(model_shapes)} == {2, 3}):
            file_separable = len(file_shapes) == 3
            return (f"The file's {layer_name!r} is a "
                    f"{'depthwise-separable' if file_separable else 'full'} 3x3 conv: set "
                    f"SEPARABLE_PYRAMID_CONVS = {if_separable if file_separable else if_full} "
                    f"as in the run that wrote it.")
    if (layer_name == "mrcnn_class_conv1" and len(file_shapes[0]) == 4
            == len(model_shapes[0]) and file_shapes[0][-1] == model_shapes[0][-1]
            and file_shapes[0][-2] in (2 * model_shapes[0][-2], model_shapes[0][-2] / 2)):
        trained = "with" if file_shapes[0][-2] > model_shapes[0][-2] else "without"
        return (f"The file's box head was trained {trained} BOX_HEAD_CONTEXT (its first layer "
                f"sees {file_shapes[0][-2]} channels, this model's {model_shapes[0][-2]}): "
                f"set BOX_HEAD_CONTEXT as in the run that wrote it.")
    for pattern, field, axis in _WIDTH_FIELDS:
        if (re.fullmatch(pattern, layer_name) and len(file_shapes[0]) >= 2
                and len(file_shapes[0]) == len(model_shapes[0])
                and file_shapes[0][axis] != model_shapes[0][axis]):
            return (f"The file was trained with {field} = {file_shapes[0][axis]}: set that in "
                    f"your Config (Matterport's files use RPN_CONV_CHANNELS = 512, "
                    f"TOP_DOWN_PYRAMID_SIZE = 256, MASK_HEAD_CHANNELS = 256, "
                    f"FPN_CLASSIF_FC_LAYERS_SIZE = 1024).")
    return None


def load_weights_by_name(model, path, exclude=None, skip_mismatch=False):
    """Assign weights from ``path`` to the layers of ``model`` that share a name (see
    :func:`backbones.weights_io.load_weights_by_name`); a width mismatch names the Config
    field (``RPN_CONV_CHANNELS``, ...) the file was trained with.

    Returns:
        dict with ``loaded``, ``missing`` and ``skipped`` layer names.
    """
    return weights_io.load_weights_by_name(model, path, exclude=exclude,
                                           skip_mismatch=skip_mismatch,
                                           mismatch_hint=_width_hint,
                                           layer_set_check=_mask_image_mismatch)


# The layer that joins the image to the mask features when MASK_IMAGE_CHANNELS > 0. The mask
# output layer has the same shape with and without it, so a file trained with the other
# setting would load without a shape error and give wrong masks: refuse it, naming the field.
_MASK_IMAGE_LAYER = "mrcnn_mask_image_fuse"


def _mask_image_mismatch(model_names, file_names):
    """The error when the file's mask head and the model's (both given, not excluded) differ
    in MASK_IMAGE_CHANNELS being on, else None."""
    if "mrcnn_mask" not in model_names or "mrcnn_mask" not in file_names:
        return None
    in_file = _MASK_IMAGE_LAYER in file_names
    if (_MASK_IMAGE_LAYER in model_names) == in_file:
        return None
    return (f"its mask head was trained {'with' if in_file else 'without'} MASK_IMAGE_CHANNELS "
            f"(the image joined to the mask features); this model is built "
            f"{'without' if in_file else 'with'} it. Set MASK_IMAGE_CHANNELS as in the run "
            "that wrote the file, or exclude the mask head (exclude=[\"mrcnn_mask.*\"]) to "
            "train a new one.")


# Matterport's Mask R-CNN COCO weights (ResNet-101 backbone, 81 classes).
COCO_WEIGHTS_URL = "https://github.com/matterport/Mask_RCNN/releases/download/v2.0/mask_rcnn_coco.h5"


def download_weights(url, md5_hash=None):
    """Download (or find in ~/.keras/models) a weights file; a clear error when offline."""
    return weights_io.download_file(url, md5_hash)


def average_weight_files(paths, out_path):
    """Write the element-wise mean of by-name weight files (our checkpoints) to ``out_path``,
    atomically: checkpoint averaging over the last epochs of a run (stochastic weight
    averaging without extra training steps; Izmailov et al., 2018).

    Every file must hold the same layers and weight shapes. Floating-point weights (kernels,
    GroupNorm / BatchNorm scales and moving statistics) are averaged in float64 and stored in
    their own dtype; any other dtype must be identical in every file and is copied.

    Returns:
        out_path.

    Raises:
        ValueError: no path, or a file whose layers or shapes differ from the first file's,
            named.
    """
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise ValueError("average_weight_files: no weight file to average")
    with h5py.File(paths[0], "r") as first:
        entries = _dataset_shapes(first)
    totals = {}
    for path in paths:
        with h5py.File(path, "r") as f:
            found = _dataset_shapes(f)
            if found != entries:
                differ = sorted(set(found.items()) ^ set(entries.items()))[:3]
                raise ValueError(f"{path} does not hold the same weights as {paths[0]} "
                                 f"(first differences: {differ}); average checkpoints of one "
                                 "run only.")
            for name in entries:
                value = f[name][()]
                if np.issubdtype(value.dtype, np.floating):
                    totals[name] = totals.get(name, 0.0) + value.astype(np.float64)
                elif name in totals and not np.array_equal(totals[name], value):
                    raise ValueError(f"{path}: {name} ({value.dtype}) differs from the "
                                     "other files and cannot be averaged")
                else:
                    totals[name] = value
    with h5py.File(paths[-1], "r") as last, atomic_target(out_path, ".h5.tmp") as tmp:
        with h5py.File(tmp, "w") as out:
            def copy(name, obj):
                if isinstance(obj, h5py.Group):
                    target = out.require_group(name)
                else:
                    total = totals[name]
                    if np.issubdtype(obj.dtype, np.floating):
                        total = (total / len(paths)).astype(obj.dtype)
                    target = out.create_dataset(name, data=total)
                target.attrs.update(obj.attrs)
            last.visititems(copy)
            out.attrs.update(last.attrs)
    return out_path


def _dataset_shapes(h5file):
    """{dataset path: shape} of every dataset in an open HDF5 file."""
    shapes = {}

    def visit(name, obj):   # returns None: a value would stop h5py's visit
        if isinstance(obj, h5py.Dataset):
            shapes[name] = obj.shape
    h5file.visititems(visit)
    return shapes
