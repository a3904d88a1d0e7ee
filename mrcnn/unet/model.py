"""The seed report's U-Net: four down levels of two 3x3 conv + ReLU (8, 16, 32, 64 filters), a
128-filter centre, up-sampling + concatenation, sigmoid output.

``outputs=1`` is the seed's foreground map; ``outputs=2`` adds a boundary channel (pixels of a
nucleus that touch another nucleus or lie on its rim), used to split touching nuclei — the
2018 winners' approach.
"""

import keras
from keras import layers

SEED_FILTERS = (8, 16, 32, 64)
SEED_CENTRE = 128


def _double_conv(x, filters, name):
    x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"{name}_conv1")(x)
    return layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"{name}_conv2")(x)


def build_unet(input_size=256, channels=3, filters=SEED_FILTERS, centre=SEED_CENTRE,
               outputs=2, name="unet"):
    """Keras U-Net mapping [B, H, W, channels] (float, 0-1) -> [B, H, W, outputs] sigmoid.

    ``input_size=None`` builds a fully convolutional model for any H, W divisible by
    2**len(filters).
    """
    inputs = keras.Input((input_size, input_size, channels), name="image")
    x = inputs
    skips = []
    for level, f in enumerate(filters):
        x = _double_conv(x, f, f"down{level + 1}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level + 1}")(x)
    x = _double_conv(x, centre, "centre")
    for level, f in reversed(list(enumerate(filters))):
        x = layers.UpSampling2D(2, name=f"up{level + 1}_upsample")(x)
        x = layers.Concatenate(name=f"up{level + 1}_concat")([x, skips[level]])
        x = _double_conv(x, f, f"up{level + 1}")
    out = layers.Conv2D(outputs, 1, activation="sigmoid", name="probabilities")(x)
    return keras.Model(inputs, out, name=name)


def dice_coefficient(y_true, y_pred, smooth=1.0):
    """Soft Dice of the foreground channel (channel 0), the seed's metric."""
    t = keras.ops.reshape(y_true[..., 0], [-1])
    p = keras.ops.reshape(y_pred[..., 0], [-1])
    inter = keras.ops.sum(t * p)
    return (2.0 * inter + smooth) / (keras.ops.sum(t) + keras.ops.sum(p) + smooth)


@keras.saving.register_keras_serializable(package="mrcnn")
class BceDiceLoss(keras.losses.Loss):
    """Binary cross-entropy over all channels plus (1 - Dice) of the foreground."""

    def __init__(self, dice_weight=1.0, name="bce_dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.dice_weight = dice_weight

    def call(self, y_true, y_pred):
        bce = keras.ops.mean(keras.losses.binary_crossentropy(y_true, y_pred))
        return bce + self.dice_weight * (1.0 - dice_coefficient(y_true, y_pred))

    def get_config(self):
        return {**super().get_config(), "dice_weight": self.dice_weight}
