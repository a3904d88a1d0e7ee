"""The five Mask R-CNN losses as pure TensorFlow functions, named like their metrics.

Every loss is a mean over the entries it covers and is 0 (not NaN) when it covers none:
an image without objects has no positive anchors or ROIs.
"""

import tensorflow as tf

LOSS_NAMES = ("rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss", "mrcnn_bbox_loss",
              "mrcnn_mask_loss")


def _mean(values, weights=None):
    if weights is None:
        return tf.math.divide_no_nan(tf.reduce_sum(values), tf.cast(tf.size(values), tf.float32))
    return tf.math.divide_no_nan(tf.reduce_sum(values * weights), tf.reduce_sum(weights))


def smooth_l1(y_true, y_pred):
    """Elementwise smooth-L1 (Huber with delta 1)."""
    diff = tf.abs(y_true - y_pred)
    return tf.where(diff < 1.0, 0.5 * diff ** 2, diff - 0.5)


def rpn_class_loss(rpn_match, rpn_class_logits):
    """Anchor objectness cross-entropy over non-neutral anchors.

    Args:
        rpn_match: [B, A, 1] int, 1 positive, -1 negative, 0 neutral.
        rpn_class_logits: [B, A, 2].
    """
    rpn_match = tf.cast(tf.squeeze(rpn_match, -1), tf.int32)
    used = tf.not_equal(rpn_match, 0)
    labels = tf.cast(tf.equal(tf.boolean_mask(rpn_match, used), 1), tf.int32)
    logits = tf.boolean_mask(rpn_class_logits, used)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return _mean(ce)


def rpn_bbox_loss(target_bbox, rpn_match, rpn_bbox):
    """Smooth-L1 of the RPN deltas of positive anchors.

    Args:
        target_bbox: [B, R, 4] targets of each image's positive anchors, packed at the start
            in ascending anchor order, zero-padded.
        rpn_match: [B, A, 1].
        rpn_bbox: [B, A, 4] predicted deltas.
    """
    positive = tf.equal(tf.cast(tf.squeeze(rpn_match, -1), tf.int32), 1)
    pred = tf.boolean_mask(rpn_bbox, positive)
    counts = tf.reduce_sum(tf.cast(positive, tf.int32), axis=1)
    rows = tf.range(tf.shape(target_bbox)[1])[None, :] < counts[:, None]
    target = tf.boolean_mask(tf.cast(target_bbox, tf.float32), rows)
    return _mean(smooth_l1(target, pred))


def mrcnn_class_loss(target_class_ids, pred_class_logits, active_class_ids, valid_rois):
    """Classifier cross-entropy over real (non-padding) ROIs.

    Predictions of classes not in the image's source dataset are ignored (Matterport's rule,
    for training on several datasets at once).

    Args:
        target_class_ids: [B, T] int.
        pred_class_logits: [B, T, num_classes].
        active_class_ids: [B, num_classes] 1 for classes of the image's dataset.
        valid_rois: [B, T] bool, False for padding.
    """
    target_class_ids = tf.cast(target_class_ids, tf.int32)
    pred_ids = tf.argmax(pred_class_logits, axis=2, output_type=tf.int32)
    pred_active = tf.gather(tf.cast(active_class_ids, tf.float32), pred_ids, batch_dims=1)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target_class_ids,
                                                        logits=pred_class_logits)
    return _mean(ce, pred_active * tf.cast(valid_rois, tf.float32))


def mrcnn_bbox_loss(target_bbox, target_class_ids, pred_bbox):
    """Smooth-L1 of the true class's deltas over positive ROIs.

    Args:
        target_bbox: [B, T, 4]; target_class_ids: [B, T]; pred_bbox: [B, T, num_classes, 4].
    """
    target_class_ids = tf.cast(target_class_ids, tf.int32)
    positive = target_class_ids > 0
    pred = tf.gather(pred_bbox, target_class_ids, batch_dims=2)  # [B, T, 4]
    return _mean(smooth_l1(tf.boolean_mask(target_bbox, positive),
                           tf.boolean_mask(pred, positive)))


def _true_class_masks(pred_masks, target_class_ids):
    """Each ROI's mask for its true class, [K, h, w], from ``pred_masks`` [K, h, w,
    num_classes], and [K] float32 1 for positive ROIs (class > 0), 0 for placeholders."""
    ids = tf.cast(target_class_ids, tf.int32)
    pred = tf.gather(tf.transpose(pred_masks, [0, 3, 1, 2]), ids, batch_dims=1)
    return pred, tf.cast(ids > 0, tf.float32)


def mask_outline_band(target):
    """1 at the pixels of ``target`` ([K, h, w] in {0, 1}) within one pixel of its outline,
    on either side (3x3 dilation minus 3x3 erosion), else 0; [K, h, w] float32."""
    t = tf.cast(target, tf.float32)[..., None]
    dilated = tf.nn.max_pool2d(t, 3, 1, "SAME")
    eroded = 1.0 - tf.nn.max_pool2d(1.0 - t, 3, 1, "SAME")
    return (dilated - eroded)[..., 0]


def mrcnn_mask_loss(target_masks, target_class_ids, pred_masks, boundary_weight=0.0):
    """Binary cross-entropy of the true class's mask over positive ROIs.

    With ``boundary_weight`` w > 0 each pixel within one pixel of the target's outline
    (:func:`mask_outline_band`) weighs 1 + w instead of 1 in the mean, so the head is pushed
    to place outlines exactly (the DSB score's high IoU thresholds); 0 is Matterport's loss.

    Args:
        target_masks: [K, h, w] in {0, 1}.
        target_class_ids: [K] int; rows with class 0 (a placeholder row) are ignored.
        pred_masks: [K, h, w, num_classes] probabilities.
    """
    pred, positive = _true_class_masks(pred_masks, target_class_ids)
    eps = 1e-7
    pred = tf.clip_by_value(pred, eps, 1.0 - eps)
    target = tf.cast(target_masks, tf.float32)
    bce = -(target * tf.math.log(pred) + (1.0 - target) * tf.math.log(1.0 - pred))
    weights = tf.zeros_like(bce) + positive[:, None, None]
    if boundary_weight:
        weights = weights * (1.0 + float(boundary_weight) * mask_outline_band(target))
    return _mean(bce, weights)


def mrcnn_contour_loss(target_masks, target_class_ids, pred_contours):
    """Binary cross-entropy of the true class's contour map over positive ROIs, against each
    target's outline band (:func:`mask_outline_band`: 1 within one pixel of the outline).

    Args:
        target_masks: [K, h, w] in {0, 1}.
        target_class_ids: [K] int; rows with class 0 are ignored.
        pred_contours: [K, h, w, num_classes] probabilities.
    """
    return mrcnn_mask_loss(mask_outline_band(target_masks), target_class_ids, pred_contours)


def mrcnn_mask_dice_loss(target_masks, target_class_ids, pred_masks, smooth=1.0):
    """1 - soft Dice of the true class's mask probabilities with the target, per positive ROI,
    averaged over them: an overlap term beside the per-pixel cross-entropy, which weighs a
    small mask's outline as much as a large one's (the DSB score's IoU per object).

    Args:
        target_masks: [K, h, w] in {0, 1}.
        target_class_ids: [K] int; rows with class 0 are ignored.
        pred_masks: [K, h, w, num_classes] probabilities.
        smooth: added to the overlap and the total, so an empty target with an empty
            prediction scores Dice 1.
    """
    pred, positive = _true_class_masks(pred_masks, target_class_ids)
    target = tf.cast(target_masks, tf.float32)
    overlap = tf.reduce_sum(pred * target, axis=[1, 2])
    total = tf.reduce_sum(pred + target, axis=[1, 2])
    dice = (2.0 * overlap + smooth) / (total + smooth)
    return _mean(1.0 - dice, positive)


def l2_weight_decay(weights, decay):
    """Matterport's weight decay: sum of decay * ||w||^2 / size(w) over kernels (not BN).

    A zero ``decay`` (AdamW, whose decay the optimizer applies) adds no term: the zero
    term's square, sum and gradient over every kernel were 3-4 % of a nucleus training
    step's op time (benchmarks/profile_step.py), and their gradient, zero, was added to
    every kernel's."""
    if isinstance(decay, (int, float)) and decay == 0:
        return tf.constant(0.0)
    terms = [decay * tf.reduce_sum(tf.square(w)) / tf.cast(tf.size(w), tf.float32)
             for w in weights if "gamma" not in w.name and "beta" not in w.name
             and "moving" not in w.name and "bias" not in w.name]
    return tf.add_n(terms) if terms else tf.constant(0.0)
