"""MobileNet (v1, v2) and DenseNet-121/169/201 from keras.applications.

Each is cut at its C2..C5 taps. ``weights="imagenet"`` goes through keras.applications' own
download; offline it fails with a message saying so instead of a bare socket error.
"""

import keras

from backbones.registry import model_from_taps, register_backbone


def _load_app(constructor, input_tensor, weights, label):
    kwargs = dict(input_tensor=input_tensor, include_top=False)
    try:
        return constructor(weights="imagenet" if weights == "imagenet" else None, **kwargs)
    except Exception as err:  # download failures surface as many exception types
        if weights == "imagenet":
            raise RuntimeError(
                f"could not get the ImageNet weights for {label} through keras.applications "
                f"({type(err).__name__}: {err}). This machine may be offline: put the file in "
                "~/.keras/models/, or use weights=None.") from err
        raise


def _app_builder(constructor, taps, label):
    def build(input_tensor, *, train_bn, weights):
        return model_from_taps(_load_app(constructor, input_tensor, weights, label), taps, label)
    return build


def _blocks_regex(pattern, blocks):
    return pattern.format("|".join(str(b) for b in blocks))


def _register(name, constructor, taps, channels, input_scale, stage_regex):
    register_backbone(name, taps=taps, channels=channels, input_scale=input_scale,
                      stage_regex=stage_regex)(_app_builder(constructor, taps, name))


# MobileNet v1: blocks 1-3 end at stride 4, 4-5 at 8, 6-11 at 16, 12-13 at 32.
_V1 = r"conv_(pad|dw|pw)_({})(_.*)?"
_register("mobilenet", keras.applications.MobileNet,
          {"C2": "conv_pw_3_relu", "C3": "conv_pw_5_relu", "C4": "conv_pw_11_relu",
           "C5": "conv_pw_13_relu"}, (128, 256, 512, 1024), 1 / 127.5,
          {"3+": _blocks_regex(_V1, range(4, 14)), "4+": _blocks_regex(_V1, range(6, 14)),
           "5+": _blocks_regex(_V1, range(12, 14))})

# MobileNet v2: blocks 1-2 end at stride 4, 3-5 at 8, 6-12 at 16, 13-16 (+ Conv_1) at 32.
_V2 = r"(block_({})_.*)|(Conv_1.*)|(out_relu)"
_register("mobilenet_v2", keras.applications.MobileNetV2,
          {"C2": "block_2_add", "C3": "block_5_add", "C4": "block_12_add", "C5": "out_relu"},
          (24, 32, 96, 1280), 1 / 127.5,
          {"3+": _blocks_regex(_V2, range(3, 17)), "4+": _blocks_regex(_V2, range(6, 17)),
           "5+": _blocks_regex(_V2, range(13, 17))})

# DenseNet: dense block k+1 ("conv{k+1}_*") and transition k+1 ("pool{k+1}_*") end at stride
# 2**(k+1); the taps are the transitions' BN-ReLU outputs and the final "relu".
_DENSE_TAPS = {"C2": "pool2_relu", "C3": "pool3_relu", "C4": "pool4_relu", "C5": "relu"}
_DENSE_STAGES = {
    "3+": r"(pool2_(conv|pool))|(conv[345]_.*)|(pool[34]_.*)|bn|relu",
    "4+": r"(pool3_(conv|pool))|(conv[45]_.*)|(pool4_.*)|bn|relu",
    "5+": r"(pool4_(conv|pool))|(conv5_.*)|bn|relu",
}
# keras.applications' DenseNets expect (x / 255 - mean) / std; one scale approximates it.
_DENSE_SCALE = 1 / (255 * 0.226)
for _name, _constructor, _c4, _c5 in (
        ("densenet121", keras.applications.DenseNet121, 1024, 1024),
        ("densenet169", keras.applications.DenseNet169, 1280, 1664),
        ("densenet201", keras.applications.DenseNet201, 1792, 1920)):
    _register(_name, _constructor, _DENSE_TAPS, (256, 512, _c4, _c5), _DENSE_SCALE,
              _DENSE_STAGES)
