"""ResNet-50/101 with Matterport's (classic Keras) layer names, and ResNet-18/34 (basic blocks,
the same naming scheme) — the light trunks that learn fastest from scratch on a CPU budget.

The names (``conv1``, ``bn_conv1``, ``res2a_branch2a``, ``bn2a_branch2a``, ...) let Matterport's
COCO/nucleus ``.h5`` files and the classic ImageNet ``resnet50..._notop.h5`` load by name.
"""

import keras
from keras import layers

from backbones.registry import register_backbone
from backbones.weights_io import download_file, load_weights_by_name

# The classic Keras ImageNet ResNet-50 (no top), in exactly these layer names.
RESNET50_NOTOP_URL = ("https://github.com/fchollet/deep-learning-models/releases/download/v0.2/"
                      "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")
RESNET50_NOTOP_MD5 = "a268eb855778b3df3c7506639542a6af"


def _block(x, filters, stage, block, strides=1, shortcut_conv=False):
    f1, f2, f3 = filters
    conv = f"res{stage}{block}_branch"
    bn = f"bn{stage}{block}_branch"
    y = layers.Conv2D(f1, 1, strides=strides, name=conv + "2a")(x)
    y = layers.BatchNormalization(name=bn + "2a")(y)
    y = layers.Activation("relu")(y)
    y = layers.Conv2D(f2, 3, padding="same", name=conv + "2b")(y)
    y = layers.BatchNormalization(name=bn + "2b")(y)
    y = layers.Activation("relu")(y)
    y = layers.Conv2D(f3, 1, name=conv + "2c")(y)
    y = layers.BatchNormalization(name=bn + "2c")(y)
    if shortcut_conv:
        x = layers.Conv2D(f3, 1, strides=strides, name=conv + "1")(x)
        x = layers.BatchNormalization(name=bn + "1")(x)
    y = layers.Add()([y, x])
    return layers.Activation("relu", name=f"res{stage}{block}_out")(y)


def _basic_block(x, filters, stage, block, strides=1, shortcut_conv=False):
    conv = f"res{stage}{block}_branch"
    bn = f"bn{stage}{block}_branch"
    y = layers.Conv2D(filters, 3, strides=strides, padding="same", name=conv + "2a")(x)
    y = layers.BatchNormalization(name=bn + "2a")(y)
    y = layers.Activation("relu")(y)
    y = layers.Conv2D(filters, 3, padding="same", name=conv + "2b")(y)
    y = layers.BatchNormalization(name=bn + "2b")(y)
    if shortcut_conv:
        x = layers.Conv2D(filters, 1, strides=strides, name=conv + "1")(x)
        x = layers.BatchNormalization(name=bn + "1")(x)
    y = layers.Add()([y, x])
    return layers.Activation("relu", name=f"res{stage}{block}_out")(y)


_LAYOUT = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
           50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3))}


def resnet_graph(input_tensor, depth):
    """ResNet-18/34/50/101 trunk -> dict of C2..C5 tensors (strides 4, 8, 16, 32)."""
    kind, counts = _LAYOUT[depth]
    x = layers.ZeroPadding2D(3)(input_tensor)
    x = layers.Conv2D(64, 7, strides=2, name="conv1")(x)
    x = layers.BatchNormalization(name="bn_conv1")(x)
    x = layers.Activation("relu")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    outputs = {}
    for stage, (width, count, strides) in enumerate(
            zip((64, 128, 256, 512), counts, (1, 2, 2, 2)), start=2):
        for i in range(count):
            block = chr(ord("a") + i)  # Matterport's names: res4a .. res4w
            first = i == 0
            if kind == "basic":
                x = _basic_block(x, width, stage, block, strides if first else 1,
                                 shortcut_conv=first and (stage > 2))
            else:
                x = _block(x, (width, width, 4 * width), stage, block,
                           strides if first else 1, shortcut_conv=first)
        outputs[f"C{stage}"] = x
    return outputs


def _build(depth):
    def build(input_tensor, *, train_bn, weights):
        model = keras.Model(keras.utils.get_source_inputs(input_tensor),
                            resnet_graph(input_tensor, depth), name=f"resnet{depth}")
        if weights == "imagenet":
            if depth != 50:
                raise ValueError(
                    f"no ImageNet file exists for resnet{depth} in Matterport's layer names; use "
                    "weights=None, COCO weights (MaskRCNN.load_weights) or resnet50.")
            load_weights_by_name(model, download_file(RESNET50_NOTOP_URL, RESNET50_NOTOP_MD5))
        return model
    return build


def _resnet_regex(stages):
    return "|".join(f"(res{s}.*)|(bn{s}.*)" for s in stages)


_STAGES = {"3+": _resnet_regex("345"), "4+": _resnet_regex("45"), "5+": _resnet_regex("5")}
# depth -> (C2..C5 tap layers, C2..C5 channels)
_ENTRIES = {
    18: ({"C2": "res2b_out", "C3": "res3b_out", "C4": "res4b_out", "C5": "res5b_out"},
         (64, 128, 256, 512)),
    34: ({"C2": "res2c_out", "C3": "res3d_out", "C4": "res4f_out", "C5": "res5c_out"},
         (64, 128, 256, 512)),
    50: ({"C2": "res2c_out", "C3": "res3d_out", "C4": "res4f_out", "C5": "res5c_out"},
         (256, 512, 1024, 2048)),
    101: ({"C2": "res2c_out", "C3": "res3d_out", "C4": "res4w_out", "C5": "res5c_out"},
          (256, 512, 1024, 2048)),
}
# The norm ending each residual branch (added to the shortcut): 2c in a bottleneck, 2b in a
# basic block.
_RESIDUAL_NORMS = {"basic": r"bn\d[a-z]+_branch2b", "bottleneck": r"bn\d[a-z]+_branch2c"}
# Zeroed from scratch by default in the bottleneck ResNets, where it was measured to help
# (ResNet-50 with GroupNorm, 12 epochs on DSB2018: README "The U-Net baseline and the
# comparison"). The basic-block ResNets keep gamma 1, as their defaults were measured.
_ZERO_INIT_BY_DEFAULT = {"basic": False, "bottleneck": True}


def _residual_kwargs(depth):
    kind = _LAYOUT[depth][0]
    return {"residual_norms": _RESIDUAL_NORMS[kind],
            "zero_init_residual": _ZERO_INIT_BY_DEFAULT[kind]}


for _depth, (_taps, _channels) in _ENTRIES.items():
    register_backbone(f"resnet{_depth}", taps=_taps, channels=_channels, stage_regex=_STAGES,
                      **_residual_kwargs(_depth))(_build(_depth))
# The GroupNorm names of earlier releases: the same backbone with norm "group" fixed, so runs
# saved as resnet18_gn / resnet50_gn load unchanged. Any backbone takes BACKBONE_NORM="group".
for _depth in (18, 50):
    register_backbone(f"resnet{_depth}_gn", taps=_ENTRIES[_depth][0],
                      channels=_ENTRIES[_depth][1], stage_regex=_STAGES, norm="group",
                      **_residual_kwargs(_depth))(_build(_depth))
