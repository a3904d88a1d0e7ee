"""The one place that reads a Config to build a model (layers only get plain arguments)."""

import numpy as np

import backbones
from mrcnn.config import anchor_settings
from mrcnn.modeling.maskrcnn_model import build_maskrcnn_graph
from mrcnn.optimizers import l2_loss_decay
from mrcnn.precision import resolve_compute_dtype


def backbone_spec(config):
    """The BackboneSpec for config.BACKBONE (a registry name or a callable)."""
    return backbones.get_backbone_spec(config.BACKBONE)


def backbone_norm(config):
    """The backbone's normalisation: "batch", "frozen" or "group".

    ``BACKBONE_NORM`` when set, else Matterport's ``TRAIN_BN`` (True: "batch", else "frozen");
    names with a fixed normalisation (``resnet18_gn``) keep theirs.

    Raises:
        ValueError: BACKBONE_NORM contradicts the backbone name's fixed normalisation.
    """
    norm = config.BACKBONE_NORM
    spec = backbone_spec(config)
    if norm is None and spec.norm is None:
        norm = "batch" if config.TRAIN_BN else "frozen"
    return backbones.resolve_norm(spec, norm)


# Fewer images than this per replica make trainable BatchNorm's batch statistics a poor guide
# to the running statistics inference uses.
SMALL_BATCH_NORM_BATCH = 8


def small_batch_norm_warning(config):
    """A warning (str) when the backbone trains BatchNorm ("batch") on fewer than
    SMALL_BATCH_NORM_BATCH images per replica (IMAGES_PER_GPU), else None.

    Training normalises each batch by its own statistics, inference by running averages of
    them; with batches of 1-2 images they disagree. Measured on the synthetic-nuclei learning
    test (2 images per step): 2 of 10 seeds found 24 and 40 of 56 nuclei after training, the box
    head calling well-placed proposals background; with GroupNorm all 10 found 55.
    """
    if backbone_norm(config) != "batch" or config.IMAGES_PER_GPU >= SMALL_BATCH_NORM_BATCH:
        return None
    return (f"training the backbone's BatchNorm on batches of {config.IMAGES_PER_GPU} "
            f"image(s) per replica: inference uses running statistics that batches under "
            f"{SMALL_BATCH_NORM_BATCH} images estimate poorly, and detection can fail. From "
            "scratch use BACKBONE_NORM='group'; with pretrained weights 'frozen' "
            "(TRAIN_BN=False).")


def maskrcnn_kwargs(config, mode, backbone_weights=None):
    """Config -> keyword arguments of :func:`build_maskrcnn_graph`."""
    if mode not in ("training", "inference"):
        raise ValueError(f"mode must be 'training' or 'inference', got {mode!r}")
    training = mode == "training"
    anchors = anchor_settings(config)
    if config.USE_MINI_MASK:
        gt_mask_shape = tuple(config.MINI_MASK_SHAPE)
    elif config.IMAGE_RESIZE_MODE in ("square", "crop"):
        gt_mask_shape = tuple(int(v) for v in config.IMAGE_SHAPE[:2])
    else:
        gt_mask_shape = (None, None)
    return dict(
        mode=mode,
        backbone=config.BACKBONE,
        backbone_weights=backbone_weights,
        backbone_norm=backbone_norm(config),
        backbone_zero_init_residual=config.BACKBONE_ZERO_INIT_RESIDUAL,
        image_channels=int(config.IMAGE_CHANNEL_COUNT),
        image_meta_size=int(config.IMAGE_META_SIZE),
        num_classes=int(config.NUM_CLASSES),
        top_down_pyramid_size=int(config.TOP_DOWN_PYRAMID_SIZE),
        separable_fpn_convs=config.SEPARABLE_PYRAMID_CONVS is True,
        separable_rpn_conv=config.SEPARABLE_PYRAMID_CONVS in (True, "rpn"),
        mask_head_channels=int(config.MASK_HEAD_CHANNELS),
        mask_image_channels=int(config.MASK_IMAGE_CHANNELS),
        mask_head_norm=config.MASK_HEAD_NORM,
        rpn_conv_channels=int(config.RPN_CONV_CHANNELS),
        anchor_scales=anchors["scales"],
        anchor_ratios=anchors["ratios"],
        anchor_strides=anchors["strides"],
        anchor_stride=anchors["anchor_stride"],
        anchor_octave=anchors["octave"],
        rpn_nms_threshold=float(config.RPN_NMS_THRESHOLD),
        pre_nms_limit=int(config.PRE_NMS_LIMIT),
        post_nms_rois=int(config.POST_NMS_ROIS_TRAINING if training
                          else config.POST_NMS_ROIS_INFERENCE),
        rpn_bbox_std_dev=np.ravel(config.RPN_BBOX_STD_DEV).tolist(),
        bbox_std_dev=np.ravel(config.BBOX_STD_DEV).tolist(),
        fc_layers_size=int(config.FPN_CLASSIF_FC_LAYERS_SIZE),
        pool_size=int(config.POOL_SIZE),
        box_head_context=(None if config.BOX_HEAD_CONTEXT is None
                          else float(config.BOX_HEAD_CONTEXT)),
        mask_pool_size=int(config.MASK_POOL_SIZE),
        mask_shape=tuple(int(v) for v in config.MASK_SHAPE),
        train_rois_per_image=int(config.TRAIN_ROIS_PER_IMAGE),
        roi_positive_ratio=float(config.ROI_POSITIVE_RATIO),
        roi_positive_sampling=str(config.ROI_POSITIVE_SAMPLING),
        mask_train_rois=(None if config.MASK_TRAIN_ROIS_PER_IMAGE is None
                         else int(config.MASK_TRAIN_ROIS_PER_IMAGE)),
        use_mini_mask=bool(config.USE_MINI_MASK),
        gt_mask_shape=gt_mask_shape,
        max_gt_instances=int(config.MAX_GT_INSTANCES),
        proposals_include_gt=bool(config.PROPOSALS_INCLUDE_GT),
        detection_max_instances=int(config.DETECTION_MAX_INSTANCES),
        detection_min_confidence=float(config.DETECTION_MIN_CONFIDENCE),
        detection_nms_threshold=float(config.DETECTION_NMS_THRESHOLD),
        detection_box_refinements=int(config.DETECTION_BOX_REFINEMENTS),
        loss_weights={k: float(v) for k, v in config.LOSS_WEIGHTS.items()},
        weight_decay=l2_loss_decay(config),
        mask_boundary_weight=float(config.MASK_BOUNDARY_WEIGHT),
        mask_contour_weight=float(config.MASK_CONTOUR_WEIGHT),
        mask_dice_weight=float(config.MASK_DICE_WEIGHT),
        compute_dtype=resolve_compute_dtype(config.COMPUTE_DTYPE),
    )


def build_maskrcnn(config, mode, backbone_weights=None):
    """Build the Keras model for ``mode`` ('training' or 'inference') from a Config."""
    return build_maskrcnn_graph(**maskrcnn_kwargs(config, mode, backbone_weights))
