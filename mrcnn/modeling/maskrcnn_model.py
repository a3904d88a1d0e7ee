"""The Mask R-CNN Keras graphs (training and inference) and the loss-computing model class.

Both graphs are functional and flat (backbone layers sit beside the heads, no nested models),
so layer names are the weight-file interface and the ``layers=`` regexes see every layer.
"""

import keras
import tensorflow as tf
from keras import layers

import backbones
from mrcnn import losses
from mrcnn.layers import (AnchorGenerator, ContextBoxes, DetectionLayer, DetectionTargetLayer,
                          GatherRows, ImageROICrop, ProposalLayer, PyramidROIAlign, RefineBoxes,
                          ScatterToSlots, SelectBoxes, UnflattenRois)
from mrcnn.modeling.fpn import build_fpn
from mrcnn.modeling.heads import build_classifier_head, build_mask_head, classifier_head
from mrcnn.modeling.rpn import RPNHead
from mrcnn.ops.image import parse_image_meta_graph
from mrcnn.precision import POLICIES

# Box, ROI and loss-facing layers always compute in float32, whatever the model's policy.
F32 = "float32"


@keras.saving.register_keras_serializable(package="mrcnn")
class NormalizeBoxes(layers.Layer):
    """Pixel boxes [B, G, 4] -> normalised, for the image's (dynamic) size.

    Call inputs: ``[boxes [B, G, 4] pixels, image [B, H, W, C]]``. Zero rows stay zero.
    """

    def call(self, inputs):
        boxes, image = inputs
        hw = tf.cast(tf.shape(image)[1:3], tf.float32)
        scale = tf.concat([hw, hw], 0) - 1.0
        boxes = tf.cast(boxes, tf.float32)
        normed = (boxes - tf.constant([0.0, 0.0, 1.0, 1.0])) / scale
        real = tf.reduce_any(tf.not_equal(boxes, 0.0), axis=-1, keepdims=True)
        return tf.where(real, normed, 0.0)

    def compute_output_shape(self, input_shape):
        return input_shape[0]


@keras.saving.register_keras_serializable(package="mrcnn")
class MaskRCNNModel(keras.Model):
    """Functional Mask R-CNN whose ``compute_loss`` combines the five losses.

    In training mode the graph's outputs hold predictions and the sampled targets, so one
    forward pass serves both. Each loss and the weight decay are tracked by their own
    ``keras.metrics.Mean`` and logged by name; ``loss`` equals
    ``sum(LOSS_WEIGHTS[k] * k) + weight_decay`` on every call, plus
    ``mask_contour_weight * mrcnn_contour_loss`` when the graph has the contour output, plus
    ``mask_dice_weight * mrcnn_mask_dice_loss`` when that weight is set.
    """

    def __init__(self, *args, loss_weights=None, weight_decay=0.0, mask_boundary_weight=0.0,
                 mask_contour_weight=0.0, mask_dice_weight=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_weights = {k: float(v) for k, v in (loss_weights or {}).items()}
        self.weight_decay = float(weight_decay)
        self.mask_boundary_weight = float(mask_boundary_weight)
        self.mask_contour_weight = float(mask_contour_weight)
        self.mask_dice_weight = float(mask_dice_weight)
        tracked = losses.LOSS_NAMES + ("weight_decay_loss",)
        if self.mask_contour_weight:
            tracked += ("mrcnn_contour_loss",)
        if self.mask_dice_weight:
            tracked += ("mrcnn_mask_dice_loss",)
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in tracked}

    @property
    def metrics(self):
        return super().metrics + list(self.loss_trackers.values())

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if "rpn_class_logits" not in y_pred:
            return super().compute_loss(x, y, y_pred, sample_weight, training=training)
        meta = tf.cast(x["input_image_meta"], tf.float32)
        valid_rois = tf.reduce_any(tf.not_equal(y_pred["rois"], 0.0), axis=-1)
        parts = {
            "rpn_class_loss": losses.rpn_class_loss(x["input_rpn_match"],
                                                    y_pred["rpn_class_logits"]),
            "rpn_bbox_loss": losses.rpn_bbox_loss(x["input_rpn_bbox"], x["input_rpn_match"],
                                                  y_pred["rpn_bbox"]),
            "mrcnn_class_loss": losses.mrcnn_class_loss(
                y_pred["target_class_ids"], y_pred["mrcnn_class_logits"],
                parse_image_meta_graph(meta)["active_class_ids"], valid_rois),
            "mrcnn_bbox_loss": losses.mrcnn_bbox_loss(
                y_pred["target_bbox"], y_pred["target_class_ids"], y_pred["mrcnn_bbox"]),
            "mrcnn_mask_loss": losses.mrcnn_mask_loss(
                y_pred["mask_targets"], y_pred["mask_class_ids"], y_pred["mrcnn_mask"],
                self.mask_boundary_weight),
        }
        if "mrcnn_mask_contour" in y_pred:
            parts["mrcnn_contour_loss"] = losses.mrcnn_contour_loss(
                y_pred["mask_targets"], y_pred["mask_class_ids"], y_pred["mrcnn_mask_contour"])
        if self.mask_dice_weight:
            parts["mrcnn_mask_dice_loss"] = losses.mrcnn_mask_dice_loss(
                y_pred["mask_targets"], y_pred["mask_class_ids"], y_pred["mrcnn_mask"])
        loss_weights = dict(self.loss_weights, mrcnn_contour_loss=self.mask_contour_weight,
                            mrcnn_mask_dice_loss=self.mask_dice_weight)
        decay = losses.l2_weight_decay(
            [w for w in self.trainable_weights if len(w.shape) > 1], self.weight_decay)
        total = decay
        for name, value in parts.items():
            total = total + loss_weights.get(name, 1.0) * value
            self.loss_trackers[name].update_state(value)
        self.loss_trackers["weight_decay_loss"].update_state(decay)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        return total / replicas if replicas > 1 else total

    def get_config(self):
        config = super().get_config()
        config.update(loss_weights=self.loss_weights, weight_decay=self.weight_decay,
                      mask_boundary_weight=self.mask_boundary_weight,
                      mask_contour_weight=self.mask_contour_weight,
                      mask_dice_weight=self.mask_dice_weight)
        return config


def _inputs(image_channels, num_classes_meta, training, max_gt=None, mask_shape=None):
    image = keras.Input((None, None, image_channels), name="input_image")
    meta = keras.Input((num_classes_meta,), name="input_image_meta")
    if not training:
        return {"input_image": image, "input_image_meta": meta,
                "input_anchors": keras.Input((None, 4), name="input_anchors")}
    return {
        "input_image": image, "input_image_meta": meta,
        "input_rpn_match": keras.Input((None, 1), name="input_rpn_match", dtype="int32"),
        "input_rpn_bbox": keras.Input((None, 4), name="input_rpn_bbox"),
        "input_gt_class_ids": keras.Input((max_gt,), name="input_gt_class_ids", dtype="int32"),
        "input_gt_boxes": keras.Input((max_gt, 4), name="input_gt_boxes"),
        "input_gt_masks": keras.Input(tuple(mask_shape) + (max_gt,), name="input_gt_masks",
                                      dtype="uint8"),
    }


def build_maskrcnn_graph(*, compute_dtype="float32", **kwargs):
    """Build the training or inference Mask R-CNN from plain arguments.

    ``compute_dtype`` "bfloat16" or "float16" builds the convolutions (backbone, FPN, RPN and
    head convs) under Keras's ``mixed_bfloat16`` / ``mixed_float16`` policy: float32
    variables, half-precision arithmetic (about twice as fast on CPUs with AVX512-BF16/AMX
    and on GPU tensor cores). Box decoding, proposals, ROI sampling, ROIAlign, detections,
    the losses and every output stay float32; under float16 ``compile`` wraps the optimizer
    in Keras's LossScaleOptimizer (the model's policy is mixed_float16). The other arguments
    are those of :func:`_build_graph`.
    """
    if compute_dtype not in POLICIES:
        raise ValueError(f"compute_dtype must be one of {sorted(POLICIES)}: {compute_dtype!r}")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(POLICIES[compute_dtype])
    try:
        return _build_graph(**kwargs)
    finally:
        keras.config.set_dtype_policy(previous)


def box_features(pool_size, context=None):
    """The box head's ROIAlign: returns ``pool(boxes [K, 4] normalised, batch_index [K], meta,
    [P2..P5])`` -> [K, pool_size, pool_size, C], or [..., 2C] with ``context`` (the ROI's
    features, then those of the ROI grown ``context`` times about its centre)."""
    align = PyramidROIAlign((pool_size, pool_size), name="roi_align_classifier", dtype=F32)
    if context is not None:
        grow = ContextBoxes(context, name="context_boxes", dtype=F32)
        context_align = PyramidROIAlign((pool_size, pool_size), name="roi_align_context",
                                        dtype=F32)
        join = keras.layers.Concatenate(axis=-1, name="roi_and_context", dtype=F32)

    def pool(boxes, batch_index, meta, features):
        pooled = align([boxes, batch_index, meta] + features)
        if context is None:
            return pooled
        return join([pooled, context_align([grow(boxes), batch_index, meta] + features)])
    return pool


def _build_graph(*, mode, backbone, backbone_weights, backbone_norm,
                 backbone_zero_init_residual=None, image_channels, image_meta_size,
                 num_classes, top_down_pyramid_size, mask_head_channels,
                 separable_fpn_convs=False, separable_rpn_conv=False,
                 mask_image_channels=0, mask_head_norm=None,
                 rpn_conv_channels, anchor_scales, anchor_ratios, anchor_strides, anchor_stride,
                 anchor_octave=(1.0,),
                 rpn_nms_threshold, pre_nms_limit, post_nms_rois, rpn_bbox_std_dev,
                 bbox_std_dev, fc_layers_size, pool_size, mask_pool_size, mask_shape,
                 train_rois_per_image, roi_positive_ratio, use_mini_mask, gt_mask_shape,
                 mask_train_rois=None, roi_positive_sampling="uniform",
                 max_gt_instances, proposals_include_gt, detection_max_instances,
                 detection_min_confidence, detection_nms_threshold, loss_weights,
                 detection_box_refinements=0, box_head_context=None,
                 weight_decay, mask_boundary_weight=0.0, mask_contour_weight=0.0,
                 mask_dice_weight=0.0,
                 name="mask_rcnn"):
    """Build the training or inference Mask R-CNN (under the current dtype policy).

    See :mod:`mrcnn.modeling.factory` for how each argument comes from the Config.

    Training inputs (Matterport's names): input_image [B, H, W, C] (mean-subtracted),
    input_image_meta [B, META], input_rpn_match [B, A, 1], input_rpn_bbox [B, R, 4],
    input_gt_class_ids [B, G], input_gt_boxes [B, G, 4] pixels, input_gt_masks [B, h, w, G] uint8 0/1.
    Inference inputs: input_image, input_image_meta, input_anchors [B, A, 4] normalised.

    Returns:
        MaskRCNNModel. Inference outputs: detections [B, D, 6], mrcnn_mask [B, D, 28, 28, C],
        mrcnn_class [B, N, C], mrcnn_bbox [B, N, C, 4], rpn_rois [B, N, 4], rois [B, N, 4]
        (what the box head's last pass saw: rpn_rois refined detection_box_refinements
        times; mrcnn_class is the mean over the passes, mrcnn_bbox the last pass's),
        rpn_class [B, A, 2], rpn_bbox [B, A, 4]. Training outputs add mrcnn_mask_contour
        [P, 28, 28, C] over the P positive ROIs when mask_contour_weight > 0 (an auxiliary
        target only; inference models have no contour layer).
    """
    training = mode == "training"
    inputs = _inputs(image_channels, image_meta_size, training, max_gt_instances, gt_mask_shape)
    image, meta = inputs["input_image"], inputs["input_image_meta"]
    _, trunk = backbones.build_backbone(backbone, image, norm=backbone_norm,
                                        weights=backbone_weights,
                                        zero_init_residual=backbone_zero_init_residual)
    c = trunk.output
    pyramid = build_fpn(c["C2"], c["C3"], c["C4"], c["C5"], top_down_pyramid_size,
                        separable=separable_fpn_convs)
    rpn_class_logits, rpn_probs, rpn_bbox = RPNHead(
        len(anchor_ratios) * len(anchor_octave), anchor_stride, rpn_conv_channels,
        separable=separable_rpn_conv)(pyramid)

    if training:
        anchors = AnchorGenerator(anchor_scales, anchor_ratios, anchor_strides,
                                  anchor_stride, anchor_octave, name="anchors", dtype=F32)(image)
    else:
        anchors = inputs["input_anchors"]
    rpn_rois = ProposalLayer(post_nms_rois, rpn_nms_threshold, pre_nms_limit, rpn_bbox_std_dev,
                             name="ROI", dtype=F32)([rpn_probs, rpn_bbox, anchors])
    features = pyramid[:4]
    align = box_features(pool_size, box_head_context)
    roi_align_mask = PyramidROIAlign((mask_pool_size, mask_pool_size), name="roi_align_mask",
                                     dtype=F32)
    image_crop = (ImageROICrop(mask_shape, name="roi_image_crop", dtype=F32)
                  if mask_image_channels else None)

    def mask_head(boxes, batch_index, contour=False):
        crops = image_crop([boxes, batch_index, image]) if image_crop else None
        return build_mask_head(roi_align_mask([boxes, batch_index, meta] + features),
                               num_classes, mask_head_channels, crops, mask_image_channels,
                               mask_head_norm, contour=contour)

    if training:
        gt_boxes = NormalizeBoxes(name="gt_boxes_normalized", dtype=F32)(
            [inputs["input_gt_boxes"], image])
        rois, target_class_ids, target_bbox, target_mask = DetectionTargetLayer(
            train_rois_per_image, roi_positive_ratio, bbox_std_dev, mask_shape,
            use_mini_mask=use_mini_mask, include_gt=proposals_include_gt,
            positive_sampling=roi_positive_sampling, name="proposal_targets", dtype=F32)(
                [rpn_rois, inputs["input_gt_class_ids"], gt_boxes, inputs["input_gt_masks"]])
        boxes, batch_index, _ = SelectBoxes("all", name="all_rois", dtype=F32)(rois)
        logits, probs, deltas = build_classifier_head(
            align(boxes, batch_index, meta, features), num_classes, fc_layers_size, pool_size)
        unflatten = UnflattenRois(name="unflatten_rois", dtype=F32)
        pos_boxes, pos_batch, pos_index = SelectBoxes("positive", min_one=True,
                                                         per_image_limit=mask_train_rois,
                                                         name="positive_rois", dtype=F32)(
            [rois, target_class_ids])
        if mask_contour_weight:
            masks, contours = mask_head(pos_boxes, pos_batch, contour=True)
        else:
            masks = mask_head(pos_boxes, pos_batch)
        outputs = {
            "rpn_class_logits": rpn_class_logits, "rpn_bbox": rpn_bbox,
            "rois": rois, "target_class_ids": target_class_ids, "target_bbox": target_bbox,
            "mrcnn_class_logits": unflatten([logits, rois]),
            "mrcnn_bbox": unflatten([deltas, rois]),
            "mrcnn_mask": masks,
            "mask_targets": GatherRows(name="mask_targets", dtype=F32)(
                [target_mask, pos_index]),
            "mask_class_ids": GatherRows(name="mask_class_ids", dtype=F32)(
                [target_class_ids, pos_index]),
        }
        if mask_contour_weight:
            outputs["mrcnn_mask_contour"] = contours
    else:
        head = classifier_head(num_classes, fc_layers_size, pool_size)
        unflatten = UnflattenRois(name="unflatten_rois", dtype=F32)
        rois, passes = rpn_rois, []
        for refinement in range(detection_box_refinements + 1):
            if refinement:
                rois = RefineBoxes(bbox_std_dev, name=f"refined_rois_{refinement}",
                                   dtype=F32)([rois, probs, deltas, meta])
            boxes, batch_index, _ = SelectBoxes(
                "all", name="all_rois" + (f"_{refinement}" if refinement else ""),
                dtype=F32)(rois)
            _, probs, deltas = head(align(boxes, batch_index, meta, features))
            probs, deltas = unflatten([probs, rois]), unflatten([deltas, rois])
            passes.append(probs)
        if len(passes) > 1:
            probs = keras.layers.Average(name="mrcnn_class_mean", dtype=F32)(passes)
        detections = DetectionLayer(detection_max_instances, detection_min_confidence,
                                    detection_nms_threshold, bbox_std_dev,
                                    name="mrcnn_detection", dtype=F32)(
            [rois, probs, deltas, meta])
        det_boxes, det_batch, det_index = SelectBoxes(
            "detections", min_one=True, name="detected_boxes", dtype=F32)(detections)
        masks = mask_head(det_boxes, det_batch)
        outputs = {
            "detections": detections,
            "mrcnn_mask": ScatterToSlots(name="mrcnn_mask_slots", dtype=F32)(
                [masks, det_index, detections]),
            "mrcnn_class": probs, "mrcnn_bbox": deltas, "rpn_rois": rpn_rois, "rois": rois,
            "rpn_class": rpn_probs, "rpn_bbox": rpn_bbox,
        }
    return MaskRCNNModel(inputs=inputs, outputs=outputs, loss_weights=loss_weights,
                         weight_decay=weight_decay,
                         mask_boundary_weight=mask_boundary_weight,
                         mask_contour_weight=mask_contour_weight if training else 0.0,
                         mask_dice_weight=mask_dice_weight if training else 0.0,
                         name=name)
