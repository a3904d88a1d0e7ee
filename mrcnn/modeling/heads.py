"""Box classifier and mask heads over flat ROI lists (Matterport's layer names).

Matterport wraps these layers in TimeDistributed over [B, N, ...]; here they run on [K, ...]
(the selected ROIs of the whole batch), so the weights have the same shapes and names while
the cost follows the ROIs actually used.
"""

from keras import layers

from mrcnn.layers.full_conv import WholeInputConv2D


def build_classifier_head(pooled, num_classes, fc_size=1024, pool_size=7):
    """ROI features -> class logits, probabilities and per-class box deltas.

    Args:
        pooled: [K, pool_size, pool_size, C] from PyramidROIAlign.

    Returns:
        logits [K, num_classes], probs [K, num_classes], deltas [K, num_classes, 4].
    """
    x = WholeInputConv2D(fc_size, pool_size, name="mrcnn_class_conv1")(pooled)
    x = layers.BatchNormalization(name="mrcnn_class_bn1")(x)
    x = layers.Activation("relu")(x)
    x = WholeInputConv2D(fc_size, 1, name="mrcnn_class_conv2")(x)
    x = layers.BatchNormalization(name="mrcnn_class_bn2")(x)
    x = layers.Activation("relu")(x)
    shared = layers.Flatten(name="pool_squeeze")(x)
    # The outputs are float32 under any policy (they feed box decoding and the losses).
    logits = layers.Dense(num_classes, name="mrcnn_class_logits", dtype="float32")(shared)
    probs = layers.Softmax(name="mrcnn_class", dtype="float32")(logits)
    deltas = layers.Dense(num_classes * 4, name="mrcnn_bbox_fc", dtype="float32")(shared)
    deltas = layers.Reshape((num_classes, 4), name="mrcnn_bbox", dtype="float32")(deltas)
    return logits, probs, deltas


def build_mask_head(pooled, num_classes, channels=256):
    """ROI features [K, 14, 14, C] -> per-class mask probabilities [K, 28, 28, num_classes]."""
    x = pooled
    for i in range(1, 5):
        x = layers.Conv2D(channels, 3, padding="same", name=f"mrcnn_mask_conv{i}")(x)
        x = layers.BatchNormalization(name=f"mrcnn_mask_bn{i}")(x)
        x = layers.Activation("relu")(x)
    x = layers.Conv2DTranspose(channels, 2, strides=2, activation="relu",
                               name="mrcnn_mask_deconv")(x)
    return layers.Conv2D(num_classes, 1, activation="sigmoid", name="mrcnn_mask",
                         dtype="float32")(x)
