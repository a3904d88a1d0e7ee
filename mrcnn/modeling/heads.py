"""Box classifier and mask heads over flat ROI lists (Matterport's layer names).

Matterport wraps these layers in TimeDistributed over [B, N, ...]; here they run on [K, ...]
(the selected ROIs of the whole batch), so the weights have the same shapes and names while
the cost follows the ROIs actually used.
"""

from keras import layers

from backbones.normalization import FastGroupNormalization, group_count

from mrcnn.layers.full_conv import WholeInputConv2D


def classifier_head(num_classes, fc_size=1024, pool_size=7):
    """The box head's layers, created once: returns ``apply(pooled)`` -> (logits [K,
    num_classes], probs [K, num_classes], deltas [K, num_classes, 4]) for pooled ROI features
    [K, pool_size, pool_size, C]. Applying it again (to refined boxes) reuses the same weights.
    """
    conv1 = WholeInputConv2D(fc_size, pool_size, name="mrcnn_class_conv1")
    bn1 = layers.BatchNormalization(name="mrcnn_class_bn1")
    conv2 = WholeInputConv2D(fc_size, 1, name="mrcnn_class_conv2")
    bn2 = layers.BatchNormalization(name="mrcnn_class_bn2")
    relu = layers.Activation("relu")
    squeeze = layers.Flatten(name="pool_squeeze")
    # The outputs are float32 under any policy (they feed box decoding and the losses).
    class_logits = layers.Dense(num_classes, name="mrcnn_class_logits", dtype="float32")
    softmax = layers.Softmax(name="mrcnn_class", dtype="float32")
    bbox_fc = layers.Dense(num_classes * 4, name="mrcnn_bbox_fc", dtype="float32")
    bbox = layers.Reshape((num_classes, 4), name="mrcnn_bbox", dtype="float32")

    def apply(pooled):
        shared = squeeze(relu(bn2(conv2(relu(bn1(conv1(pooled)))))))
        logits = class_logits(shared)
        return logits, softmax(logits), bbox(bbox_fc(shared))
    return apply


def build_classifier_head(pooled, num_classes, fc_size=1024, pool_size=7):
    """ROI features -> class logits, probabilities and per-class box deltas.

    Args:
        pooled: [K, pool_size, pool_size, C] from PyramidROIAlign.

    Returns:
        logits [K, num_classes], probs [K, num_classes], deltas [K, num_classes, 4].
    """
    return classifier_head(num_classes, fc_size, pool_size)(pooled)


def build_mask_head(pooled, num_classes, channels=256, image_crops=None, image_channels=0,
                    norm=None, contour=False):
    """ROI features [K, 14, 14, C] -> per-class mask probabilities [K, 28, 28, num_classes].

    With ``image_crops`` [K, 28, 28, image C] (the input image on each ROI's mask grid,
    :class:`mrcnn.layers.ImageROICrop`) and ``image_channels`` > 0, two 3x3 convolutions of
    the crops are joined to the upsampled features by a 1x1 convolution before the output.
    ``norm`` None follows each 3x3 convolution with BatchNormalization (Matterport's
    ``mrcnn_mask_bn{i}``), "group" with GroupNormalization of each ROI by itself
    (``mrcnn_mask_gn{i}``). ``contour`` True also returns per-class contour probabilities
    [K, 28, 28, num_classes] from a 1x1 layer ``mrcnn_mask_contour`` on the same features
    (the auxiliary border target, ``MASK_CONTOUR_WEIGHT``): ``(masks, contours)``.
    """
    x = pooled
    for i in range(1, 5):
        x = layers.Conv2D(channels, 3, padding="same", name=f"mrcnn_mask_conv{i}")(x)
        if norm == "group":
            x = FastGroupNormalization(group_count(channels), name=f"mrcnn_mask_gn{i}")(x)
        else:
            x = layers.BatchNormalization(name=f"mrcnn_mask_bn{i}")(x)
        x = layers.Activation("relu")(x)
    x = layers.Conv2DTranspose(channels, 2, strides=2, activation="relu",
                               name="mrcnn_mask_deconv")(x)
    if image_crops is not None and image_channels:
        g = image_crops
        for i in range(1, 3):
            g = layers.Conv2D(image_channels, 3, padding="same", activation="relu",
                              name=f"mrcnn_mask_image_conv{i}")(g)
        x = layers.Concatenate(name="mrcnn_mask_image_join")([x, g])
        x = layers.Conv2D(channels, 1, activation="relu", name="mrcnn_mask_image_fuse")(x)
    masks = layers.Conv2D(num_classes, 1, activation="sigmoid", name="mrcnn_mask",
                          dtype="float32")(x)
    if not contour:
        return masks
    return masks, layers.Conv2D(num_classes, 1, activation="sigmoid", name="mrcnn_mask_contour",
                                dtype="float32")(x)
