"""Region Proposal Network head, shared across pyramid levels (Matterport's layer names)."""

from keras import layers


class RPNHead:
    """One set of RPN layers applied to every pyramid level.

    Args:
        anchors_per_location: len(RPN_ANCHOR_RATIOS) * RPN_ANCHOR_SCALES_PER_OCTAVE.
        anchor_stride: RPN_ANCHOR_STRIDE.
        conv_channels: RPN_CONV_CHANNELS of the shared 3x3 conv.
        separable: SEPARABLE_PYRAMID_CONVS True or "rpn": that conv depthwise-separable
            (same name).
    """

    def __init__(self, anchors_per_location, anchor_stride=1, conv_channels=512,
                 separable=False):
        k = anchors_per_location
        conv = layers.SeparableConv2D if separable else layers.Conv2D
        self.shared = conv(conv_channels, 3, padding="same", activation="relu",
                           strides=anchor_stride, name="rpn_conv_shared")
        self.class_raw = layers.Conv2D(2 * k, 1, name="rpn_class_raw")
        self.bbox_pred = layers.Conv2D(4 * k, 1, name="rpn_bbox_pred")

    def __call__(self, feature_maps):
        """[P2..P6] -> (rpn_class_logits [B, A, 2], rpn_probs [B, A, 2], rpn_bbox [B, A, 4]).

        Anchor order is level by level, row-major, then each cell's anchor shapes (octave
        scale outer, ratio inner), as :mod:`mrcnn.ops.anchors` generates them.
        """
        logits, deltas = [], []
        for i, p in enumerate(feature_maps):
            shared = self.shared(p)
            # float32 from here on, whatever the policy: these feed box decoding and losses.
            logits.append(layers.Reshape((-1, 2), name=f"rpn_class_logits_p{i + 2}",
                                         dtype="float32")(self.class_raw(shared)))
            deltas.append(layers.Reshape((-1, 4), name=f"rpn_bbox_p{i + 2}",
                                         dtype="float32")(self.bbox_pred(shared)))
        rpn_class_logits = layers.Concatenate(axis=1, name="rpn_class_logits",
                                              dtype="float32")(logits)
        rpn_probs = layers.Softmax(name="rpn_class", dtype="float32")(rpn_class_logits)
        rpn_bbox = layers.Concatenate(axis=1, name="rpn_bbox", dtype="float32")(deltas)
        return rpn_class_logits, rpn_probs, rpn_bbox
