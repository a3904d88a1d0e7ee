"""ProposalLayer and AnchorGenerator: anchors -> scored, refined, NMS-filtered proposals."""

import keras
import numpy as np
import tensorflow as tf

from mrcnn.ops.anchors import tf_generate_pyramid_anchors
from mrcnn.ops.boxes import tf_apply_box_deltas, tf_clip_boxes, tf_norm_boxes


@keras.saving.register_keras_serializable(package="mrcnn")
class AnchorGenerator(keras.layers.Layer):
    """Pyramid anchors for the image's (dynamic) size, normalised.

    Call input: image [B, H, W, C]. Output: anchors [B, A, 4] normalised (y1, x1, y2, x2), in
    the order of :func:`mrcnn.ops.anchors.generate_pyramid_anchors` (the RPN targets' order).
    """

    def __init__(self, scales, ratios, strides, anchor_stride=1, octave=(1.0,), **kwargs):
        super().__init__(**kwargs)
        self.scales = [float(s) for s in scales]
        self.ratios = [float(r) for r in ratios]
        self.strides = [int(s) for s in strides]
        self.anchor_stride = int(anchor_stride)
        self.octave = [float(m) for m in octave]

    def call(self, image):
        shape = tf.shape(image)
        anchors = tf_generate_pyramid_anchors(shape[1:3], self.scales, self.ratios,
                                              self.strides, self.anchor_stride, self.octave)
        anchors = tf_norm_boxes(anchors, shape[1:3])
        return tf.broadcast_to(anchors[None], tf.concat([shape[:1], tf.shape(anchors)], 0))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], None, 4)

    def get_config(self):
        return {**super().get_config(), "scales": self.scales, "ratios": self.ratios,
                "strides": self.strides, "anchor_stride": self.anchor_stride,
                "octave": self.octave}


@keras.saving.register_keras_serializable(package="mrcnn")
class ProposalLayer(keras.layers.Layer):
    """Keep the top-scoring anchors, apply the RPN deltas, clip, and run NMS.

    Call inputs:
        rpn_probs: [B, A, 2] background/foreground probabilities.
        rpn_bbox: [B, A, 4] deltas (divided by RPN_BBOX_STD_DEV, as the head predicts them).
        anchors: [B, A, 4] normalised.

    Output:
        proposals [B, proposal_count, 4] normalised, zero-padded where NMS kept fewer.
    """

    def __init__(self, proposal_count, nms_threshold, pre_nms_limit, rpn_bbox_std_dev,
                 **kwargs):
        super().__init__(**kwargs)
        self.proposal_count = int(proposal_count)
        self.nms_threshold = float(nms_threshold)
        self.pre_nms_limit = int(pre_nms_limit)
        self.rpn_bbox_std_dev = [float(v) for v in np.ravel(rpn_bbox_std_dev)]

    def call(self, inputs):
        probs, deltas, anchors = inputs
        scores = probs[..., 1]
        deltas = deltas * tf.constant(self.rpn_bbox_std_dev, tf.float32)
        k = tf.minimum(self.pre_nms_limit, tf.shape(scores)[1])
        top_scores, ix = tf.math.top_k(scores, k=k, sorted=True)
        deltas = tf.gather(deltas, ix, batch_dims=1)
        anchors = tf.gather(anchors, ix, batch_dims=1)
        boxes = tf_clip_boxes(tf_apply_box_deltas(anchors, deltas), [0.0, 0.0, 1.0, 1.0])
        count = self.proposal_count

        def nms(args):
            image_boxes, image_scores = args
            keep = tf.image.non_max_suppression(image_boxes, image_scores, count,
                                                self.nms_threshold)
            kept = tf.gather(image_boxes, keep)
            return tf.pad(kept, [[0, count - tf.shape(kept)[0]], [0, 0]])

        out = tf.map_fn(nms, (boxes, top_scores),
                        fn_output_signature=tf.TensorSpec([count, 4], tf.float32))
        return tf.stop_gradient(out)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.proposal_count, 4)

    def get_config(self):
        return {**super().get_config(), "proposal_count": self.proposal_count,
                "nms_threshold": self.nms_threshold, "pre_nms_limit": self.pre_nms_limit,
                "rpn_bbox_std_dev": self.rpn_bbox_std_dev}
