"""DetectionTargetLayer: sample ROIs from proposals and build the heads' training targets."""

import keras
import numpy as np
import tensorflow as tf

from mrcnn.ops.boxes import tf_box_refinement, tf_overlaps


POSITIVE_SAMPLING = ("uniform", "per_instance")


def _nonzero_rows(boxes):
    return tf.reduce_any(tf.not_equal(boxes, 0.0), axis=-1)


@keras.saving.register_keras_serializable(package="mrcnn")
class DetectionTargetLayer(keras.layers.Layer):
    """Subsample proposals into positive and negative ROIs and build their targets.

    A proposal is positive when its IoU with a (non-crowd) ground-truth box is >= 0.5, negative
    when < 0.5 and it does not touch a crowd box (negative class id). Up to
    ``rois_per_image * positive_ratio`` positives are kept; negatives fill the rest
    (detectron2's rule, so an image without objects still yields negatives). With
    ``include_gt`` the ground-truth boxes join the proposals first.

    ``positive_sampling`` picks which positives are kept when there are more than that:
    ``"uniform"`` (Matterport, detectron2) a uniform random subset, so an object covered by
    many proposals (a large one) gets many ROIs and one covered by few (a small one) is often
    left out; ``"per_instance"`` (Libra R-CNN's instance-balanced sampling) weights each
    positive by 1 / (the number of positives of its object), so every object gets about the
    same share (weighted sampling without replacement, Efraimidis & Spirakis).

    Call inputs:
        proposals: [B, P, 4] normalised, zero-padded.
        gt_class_ids: [B, G] int, 0 = padding, negative = crowd.
        gt_boxes: [B, G, 4] normalised, zero-padded.
        gt_masks: [B, h, w, G] (mini-masks of size MINI_MASK_SHAPE, or image-sized).

    Outputs:
        rois [B, T, 4] normalised (positives first, zero-padded), target_class_ids [B, T] int32,
        target_deltas [B, T, 4] (divided by BBOX_STD_DEV), target_masks [B, T, mh, mw] in {0, 1}.
    """

    def __init__(self, rois_per_image, positive_ratio, bbox_std_dev, mask_shape,
                 use_mini_mask=True, include_gt=True, positive_sampling="uniform", **kwargs):
        super().__init__(**kwargs)
        if positive_sampling not in POSITIVE_SAMPLING:
            raise ValueError(f"positive_sampling={positive_sampling!r}; use one of "
                             f"{POSITIVE_SAMPLING}.")
        self.positive_sampling = positive_sampling
        self.rois_per_image = int(rois_per_image)
        self.positive_ratio = float(positive_ratio)
        self.bbox_std_dev = [float(v) for v in np.ravel(bbox_std_dev)]
        self.mask_shape = tuple(int(v) for v in mask_shape)
        self.use_mini_mask = bool(use_mini_mask)
        self.include_gt = bool(include_gt)

    def _one_image(self, args):
        proposals, gt_class_ids, gt_boxes, gt_masks = args
        t = self.rois_per_image
        proposals = tf.boolean_mask(proposals, _nonzero_rows(proposals))
        real = _nonzero_rows(gt_boxes)
        gt_class_ids = tf.boolean_mask(tf.cast(gt_class_ids, tf.int32), real)
        gt_boxes = tf.boolean_mask(gt_boxes, real)
        gt_masks = tf.boolean_mask(tf.transpose(gt_masks, [2, 0, 1]), real)  # [G, h, w]

        crowd = gt_class_ids < 0
        crowd_boxes = tf.boolean_mask(gt_boxes, crowd)
        gt_class_ids = tf.boolean_mask(gt_class_ids, ~crowd)
        gt_boxes = tf.boolean_mask(gt_boxes, ~crowd)
        gt_masks = tf.boolean_mask(gt_masks, ~crowd)
        if self.include_gt:
            proposals = tf.concat([proposals, gt_boxes], axis=0)

        # A zero column keeps max/argmax defined when there is no ground truth.
        n = tf.shape(proposals)[0]
        overlaps = tf.concat([tf_overlaps(proposals, gt_boxes), -tf.ones([n, 1])], axis=1)
        crowd_iou = tf.concat([tf_overlaps(proposals, crowd_boxes), tf.zeros([n, 1])], axis=1)
        max_iou = tf.reduce_max(overlaps, axis=1)
        positive = tf.where(max_iou >= 0.5)[:, 0]
        negative = tf.where((max_iou < 0.5) & (tf.reduce_max(crowd_iou, axis=1) < 0.001))[:, 0]

        positive = self._sample_positives(positive, overlaps, int(t * self.positive_ratio))
        negative = tf.random.shuffle(negative)[:t - tf.shape(positive)[0]]
        pos_rois = tf.gather(proposals, positive)
        neg_rois = tf.gather(proposals, negative)

        assignment = tf.argmax(tf.gather(overlaps, positive), axis=1, output_type=tf.int32)
        gt_boxes_padded = tf.concat([gt_boxes, tf.constant([[0.0, 0.0, 1.0, 1.0]])], axis=0)
        roi_gt_boxes = tf.gather(gt_boxes_padded, assignment)
        roi_class_ids = tf.gather(tf.concat([gt_class_ids, [0]], 0), assignment)
        deltas = tf_box_refinement(pos_rois, roi_gt_boxes) / tf.constant(self.bbox_std_dev)

        mask_h, mask_w = tf.shape(gt_masks)[1], tf.shape(gt_masks)[2]
        gt_masks_padded = tf.concat(
            [tf.cast(gt_masks, tf.float32), tf.zeros([1, mask_h, mask_w])], axis=0)
        roi_masks = tf.gather(gt_masks_padded, assignment)[..., None]
        boxes = pos_rois
        if self.use_mini_mask:
            # Express each ROI in the coordinates of its ground-truth box (the mini-mask frame).
            y1, x1, y2, x2 = tf.unstack(pos_rois, axis=1)
            gy1, gx1, gy2, gx2 = tf.unstack(roi_gt_boxes, axis=1)
            gh, gw = gy2 - gy1, gx2 - gx1
            boxes = tf.stack([(y1 - gy1) / gh, (x1 - gx1) / gw,
                              (y2 - gy1) / gh, (x2 - gx1) / gw], axis=1)
        masks = tf.image.crop_and_resize(roi_masks, boxes, tf.range(tf.shape(boxes)[0]),
                                         self.mask_shape)
        masks = tf.round(tf.squeeze(masks, axis=3))

        rois = tf.concat([pos_rois, neg_rois], axis=0)
        pad = t - tf.shape(rois)[0]
        num_pos = tf.shape(pos_rois)[0]
        rois = tf.pad(rois, [[0, pad], [0, 0]])
        class_ids = tf.pad(roi_class_ids, [[0, t - num_pos]])
        deltas = tf.pad(deltas, [[0, t - num_pos], [0, 0]])
        masks = tf.pad(masks, [[0, t - num_pos], [0, 0], [0, 0]])
        return rois, class_ids, deltas, masks

    def _sample_positives(self, positive, overlaps, limit):
        """At most ``limit`` of the ``positive`` proposal indices [P], in random order."""
        if self.positive_sampling == "uniform":
            return tf.random.shuffle(positive)[:limit]
        owner = tf.argmax(tf.gather(overlaps, positive), axis=1, output_type=tf.int32)
        owner_positives = tf.gather(
            tf.math.bincount(owner, minlength=tf.shape(overlaps)[1]), owner)
        # Efraimidis-Spirakis: key u^(1/w) with weight w = 1 / owner_positives; the largest
        # keys (compared as logs) are a weighted sample without replacement.
        u = tf.random.uniform(tf.shape(owner), minval=1e-12, maxval=1.0)
        keys = tf.math.log(u) * tf.cast(owner_positives, tf.float32)
        _, order = tf.math.top_k(keys, tf.minimum(tf.shape(positive)[0], limit))
        return tf.gather(positive, order)

    def call(self, inputs):
        t = self.rois_per_image
        signature = (tf.TensorSpec([t, 4], tf.float32), tf.TensorSpec([t], tf.int32),
                     tf.TensorSpec([t, 4], tf.float32),
                     tf.TensorSpec([t] + list(self.mask_shape), tf.float32))
        proposals, gt_class_ids, gt_boxes, gt_masks = inputs
        outputs = tf.map_fn(self._one_image,
                            (proposals, gt_class_ids, tf.cast(gt_boxes, tf.float32), gt_masks),
                            fn_output_signature=signature)
        return tuple(tf.stop_gradient(o) for o in outputs)

    def compute_output_shape(self, input_shape):
        b, t = input_shape[0][0], self.rois_per_image
        return ((b, t, 4), (b, t), (b, t, 4), (b, t) + self.mask_shape)

    def get_config(self):
        return {**super().get_config(), "rois_per_image": self.rois_per_image,
                "positive_ratio": self.positive_ratio, "bbox_std_dev": self.bbox_std_dev,
                "mask_shape": list(self.mask_shape), "use_mini_mask": self.use_mini_mask,
                "include_gt": self.include_gt, "positive_sampling": self.positive_sampling}
