"""Mask R-CNN configuration with Matterport's field names and meanings.

Subclass :class:`Config` and override UPPER_CASE attributes::

    class CellsConfig(Config):
        NAME = "cells"
        NUM_CLASSES = 2          # background + nucleus
        BACKBONE = "mobilenet_v2"
        IMAGES_PER_GPU = 2

Computed fields (``BATCH_SIZE``, ``IMAGE_SHAPE``, ``IMAGE_META_SIZE``) are read-only properties
derived from the fields they depend on, so they never go stale;
:meth:`Config.validate` rejects inconsistent values with a message naming the field and the fix.
Only :mod:`mrcnn.modeling.factory` turns a Config into layer arguments; layers never see it.
"""

import numpy as np

import backbones
from backbones.normalization import NORMS
from mrcnn.layers.detection_target import POSITIVE_SAMPLING
from mrcnn.ops.anchors import octave_scales, pyramid_strides
from mrcnn.ops.image import IMAGE_NORMALIZATIONS, RESIZE_MODES, image_meta_size
from mrcnn.optimizers import OPTIMIZERS
from mrcnn.precision import CHOICES as COMPUTE_DTYPES
from mrcnn.schedules import SCHEDULES


class Config:
    """Base configuration. Override fields in a subclass, never edit this class."""

    NAME = None
    GPU_COUNT = 1
    IMAGES_PER_GPU = 2
    STEPS_PER_EPOCH = 1000
    VALIDATION_STEPS = 50
    # The validation losses are computed at every n-th epoch (and at the first epoch of each
    # train() call and its last unless a time budget ends it sooner); 1 = every epoch
    # (Matterport). They are only logged, so a larger n leaves more of a time budget to training.
    VALIDATION_EVERY_N_EPOCHS = 1

    # A registered backbone name (see backbones.list_backbones()) or a callable
    # ``fn(input_tensor, *, train_bn, weights) -> keras.Model`` with outputs C2..C5.
    BACKBONE = "resnet101"

    FPN_CLASSIF_FC_LAYERS_SIZE = 1024
    TOP_DOWN_PYRAMID_SIZE = 256
    # Which pyramid 3x3 convs are depthwise-separable (a 3x3 depthwise conv, then a 1x1 conv;
    # MobileNet's, EfficientDet's): False (Matterport's full convs), "rpn" (only the RPN's
    # shared conv, run on P2..P6) or True (that and the FPN's output convs P2..P5). With 128
    # channels a full 3x3 conv on P2 costs as many multiply-adds as ResNet-18's whole
    # stride-4 stage; the separable one about 1/8.
    SEPARABLE_PYRAMID_CONVS = False
    # Channels of the mask head's convolutions (Matterport: 256).
    MASK_HEAD_CHANNELS = 256
    # Image guidance for the mask head: 0 = off (Matterport). N > 0: the input image is also
    # sampled on each ROI's 28x28 mask grid (the mask targets' frame), passed through two 3x3
    # convolutions of N channels and joined to the upsampled mask features by a 1x1
    # convolution before the mask output, so outlines can follow the pixels and not only
    # stride-4 features.
    MASK_IMAGE_CHANNELS = 0
    # Normalisation after each of the mask head's four 3x3 convolutions: None = Matterport's
    # BatchNormalization (mrcnn_mask_bn1..4, trained only with TRAIN_HEAD_BN), "group" =
    # GroupNormalization over each ROI by itself (mrcnn_mask_gn1..4, always trained with the
    # heads; what Wu & He's from-scratch Mask R-CNN uses in its heads).
    MASK_HEAD_NORM = None
    NUM_CLASSES = 1

    # One anchor side per pyramid level P2..P6 (pixels of the molded image); the levels'
    # strides come from the backbone's registry entry (4, 8, 16, 32, and 64 for P6).
    RPN_ANCHOR_SCALES = (32, 64, 128, 256, 512)
    RPN_ANCHOR_RATIOS = [0.5, 1, 2]
    # Anchor sides per octave at every cell: 1 is Matterport's (the level's side only); 2 adds
    # the side x sqrt(2), so a box between two levels' sides still has an anchor of about its
    # size (RetinaNet uses 3). Multiplies the anchors, and the RPN head's outputs, by it.
    RPN_ANCHOR_SCALES_PER_OCTAVE = 1
    RPN_ANCHOR_STRIDE = 1
    # Channels of the shared RPN 3x3 conv. 256 is the detectron2/torchvision width; Matterport
    # used 512, which costs twice as much (0.12 s more per 512x512 detect with ResNet-50 on
    # 2 CPU cores). Set 512 to load Matterport's .h5 files (load_weights says so if needed).
    RPN_CONV_CHANNELS = 256
    RPN_NMS_THRESHOLD = 0.7
    RPN_TRAIN_ANCHORS_PER_IMAGE = 256
    # RPN training labels: an anchor is positive at IoU >= RPN_POSITIVE_IOU with a box (and
    # every box's best anchor is), negative below RPN_NEGATIVE_IOU; Faster R-CNN's 0.7 / 0.3.
    RPN_POSITIVE_IOU = 0.7
    RPN_NEGATIVE_IOU = 0.3
    PRE_NMS_LIMIT = 6000
    POST_NMS_ROIS_TRAINING = 2000
    POST_NMS_ROIS_INFERENCE = 1000
    # Add the ground-truth boxes to the proposals before sampling ROIs in training
    # (detectron2/torchvision practice): the heads see positives from the first step.
    PROPOSALS_INCLUDE_GT = True

    USE_MINI_MASK = True
    MINI_MASK_SHAPE = (56, 56)

    IMAGE_RESIZE_MODE = "square"
    IMAGE_MIN_DIM = 800
    IMAGE_MAX_DIM = 1024
    IMAGE_MIN_SCALE = 0
    # Crop mode, training only: multiply each crop's scale by a factor drawn log-uniformly
    # from (low, high), e.g. (0.7, 1.4); None keeps the scale fixed.
    IMAGE_SCALE_JITTER = None
    # Crop mode, training only: with this probability a crop also receives the whole objects
    # of another random window of the same image, pasted into its free space with a rim of
    # COPY_PASTE_MARGIN pixels of their own surroundings (mrcnn.data.copy_paste). 0: off.
    COPY_PASTE_PROBABILITY = 0.0
    COPY_PASTE_MARGIN = 2
    # Object-size normalisation (Cellpose's idea: objects of one size for the network). None:
    # off. A number D: training crops are scaled so the image's median object (equivalent
    # diameter, Dataset.object_size) is D model-input pixels, within OBJECT_SCALE_RANGE (before
    # IMAGE_SCALE_JITTER); inference runs once at the usual scale, measures the median detected
    # object and, when its scale is off by more than OBJECT_RESCALE_TOLERANCE, runs again at it.
    OBJECT_SIZE_TARGET = None
    OBJECT_SCALE_RANGE = (0.5, 4.0)
    OBJECT_RESCALE_TOLERANCE = 0.2
    OBJECT_RESCALE_MIN_COUNT = 3
    OBJECT_RESCALE_MAX_SIDE = 4096
    IMAGE_CHANNEL_COUNT = 3
    # Per-image intensity normalisation before resizing, in training and inference alike
    # (mrcnn.ops.image.normalize_image): None, "stretch" (colour kept, one percentile
    # stretch of all channels, so dim and bright exposures look alike), "clahe" (the stretch,
    # then CLAHE on the lightness: local contrast equalised), "nuclei" (grayscale,
    # dark background, percentile stretch) or "nuclei_stain" (the same, but stained colour
    # images give their haematoxylin channel from colour deconvolution instead of the
    # inverted grey).
    IMAGE_NORMALIZATION = None
    MEAN_PIXEL = np.array([123.7, 116.8, 103.9])

    TRAIN_ROIS_PER_IMAGE = 200
    ROI_POSITIVE_RATIO = 0.33
    # Which positive ROIs the heads train on when an image has more than TRAIN_ROIS_PER_IMAGE *
    # ROI_POSITIVE_RATIO: "uniform" (Matterport) or "per_instance" (each object about the
    # same share, however many proposals cover it; mrcnn.layers.DetectionTargetLayer).
    ROI_POSITIVE_SAMPLING = "uniform"
    # At most this many of an image's positive ROIs (a random subset: the detection targets
    # shuffle them) go through the mask head in training; None = all of them (Matterport).
    MASK_TRAIN_ROIS_PER_IMAGE = None
    POOL_SIZE = 7
    # The box head also pools the ROI grown this many times about its centre (its
    # surroundings) and sees both, channel-concatenated; None = the ROI only (Matterport).
    BOX_HEAD_CONTEXT = None
    MASK_POOL_SIZE = 14
    MASK_SHAPE = [28, 28]
    MAX_GT_INSTANCES = 100

    RPN_BBOX_STD_DEV = np.array([0.1, 0.1, 0.2, 0.2])
    BBOX_STD_DEV = np.array([0.1, 0.1, 0.2, 0.2])

    DETECTION_MAX_INSTANCES = 100
    DETECTION_MIN_CONFIDENCE = 0.7
    DETECTION_NMS_THRESHOLD = 0.3
    DETECTION_MASK_THRESHOLD = 0.5
    # Inference only: after the box head has classified and refined the proposals, run it
    # this many more times, each on the boxes the previous pass refined (same weights); a
    # detection's class probabilities are the mean over the passes (Cascade R-CNN's test-time
    # ensemble), its box the last pass's refinement. 0 = one pass (Matterport).
    DETECTION_BOX_REFINEMENTS = 0
    # Inference only: a detection whose mask is covered by more than this fraction by the masks
    # of higher-scored detections is dropped (a duplicate, or a fragment of a neighbour, which
    # instance-level scores such as the DSB score count as a false positive once overlaps are
    # removed). Applied by detect() after the masks are pasted, and in the SavedModel export.
    # None = off (Matterport: every detection is returned).
    DETECTION_MAX_COVERED_FRACTION = None
    # Inference only: a detection left with fewer than this many pixels of the original image
    # outside the masks of higher-scored detections is dropped (instance-level scores count
    # such specks as false positives). Applied with DETECTION_MAX_COVERED_FRACTION. 0 = off.
    DETECTION_MIN_MASK_AREA = 0
    # Inference only: (low, high) mask probabilities in which the image decides. A pixel of a
    # detection's box whose probability is in [low, high) belongs to the mask when its grey level
    # lies on the object's side of the Otsu threshold of the box grown by
    # DETECTION_MASK_INTENSITY_MARGIN pixels (original-image pixels; the side most of the mask
    # thresholded at DETECTION_MASK_THRESHOLD lies on, so bright and dark objects both work);
    # >= high is in, < low out. Outlines then follow the image where the 28x28 mask is unsure
    # (mrcnn.ops.masks.follow_intensity). Grey images only: a colour image (stained tissue,
    # photographs) keeps its thresholded masks. Applied by detect() while pasting the masks, and
    # in the SavedModel export. None = off (Matterport's masks).
    DETECTION_MASK_INTENSITY_BAND = None
    DETECTION_MASK_INTENSITY_MARGIN = 10
    # Inference only: detect each image a second time at half its scale and add the
    # detections of that pass whose masks cover at least this many pixels of the original
    # image: large objects, which the full-scale pass can miss or break into fragments. The
    # pooled detections then go through DETECTION_MAX_COVERED_FRACTION (which an inference
    # model then needs set) and DETECTION_MIN_MASK_AREA in score order, so a whole object
    # outscoring its fragments replaces them. Needs the pad64 inference resize mode
    # (crop-mode training configs have it); detect takes about 1.4x the time (nucleus model,
    # DSB2018 val); not in the SavedModel export or in tiled prediction. None = off.
    HALF_SCALE_PASS_MIN_AREA = None

    LEARNING_RATE = 0.001
    LEARNING_MOMENTUM = 0.9
    WEIGHT_DECAY = 0.0001
    # Extra weight of the mask loss at the pixels within one pixel of each target outline
    # (mrcnn.losses.mrcnn_mask_loss): 0 is Matterport's plain binary cross-entropy.
    MASK_BOUNDARY_WEIGHT = 0.0
    # Weight of an auxiliary contour output of the mask head (training only): a 1x1 sigmoid
    # layer ``mrcnn_mask_contour`` beside ``mrcnn_mask`` learns each target's outline band
    # (the pixels within one pixel of it), the border target of the 2018 DSB winners, as
    # ``mrcnn_contour_loss``. Inference models do not build it. 0 = off (Matterport's head).
    MASK_CONTOUR_WEIGHT = 0.0
    # Weight of a soft-Dice term beside the mask's cross-entropy (training only): 1 - Dice of
    # each positive ROI's mask probabilities with its target, averaged over the ROIs, as
    # ``mrcnn_mask_dice_loss`` (mrcnn.losses.mrcnn_mask_dice_loss). 0 = off (Matterport's loss).
    MASK_DICE_WEIGHT = 0.0
    # "sgd": Matterport's SGD with LEARNING_MOMENTUM, and WEIGHT_DECAY as an L2 loss term
    # (decay * ||w||^2 / size(w) per kernel). "adamw": AdamW (Loshchilov & Hutter), with
    # WEIGHT_DECAY decoupled (w -= lr * WEIGHT_DECAY * w each step; not on biases or norm
    # scales/offsets) and no L2 loss term; it wants a learning rate near 1e-4 to 1e-3, not
    # SGD's 0.001-0.02, and a WEIGHT_DECAY near 0.05. Both clip by GRADIENT_CLIP_NORM.
    OPTIMIZER = "sgd"
    LOSS_WEIGHTS = {
        "rpn_class_loss": 1.0,
        "rpn_bbox_loss": 1.0,
        "mrcnn_class_loss": 1.0,
        "mrcnn_bbox_loss": 1.0,
        "mrcnn_mask_loss": 1.0,
    }
    # Normalisation of the backbone, honoured by every registered backbone (the layers are
    # swapped under the same names, so weight files load across choices where shapes agree):
    # "frozen" BatchNorm (pretrained weights, small batches), "batch" (trainable BatchNorm,
    # large batches of similar images) or "group" (GroupNorm: what trains from scratch with
    # batches of 1-2). None follows Matterport's TRAIN_BN: True -> "batch", else "frozen".
    BACKBONE_NORM = None
    # Matterport's switch, read only when BACKBONE_NORM is None.
    TRAIN_BN = False
    # From scratch only: the backbone's last normalisation in each residual branch starts with
    # scale 0, so every residual block starts as the identity (the ResNets; backbones without
    # residual norms are unchanged; True refuses the untrainable "frozen" norm). None: the
    # backbone's own default (on for ResNet-50/101 under a trainable norm, else off).
    BACKBONE_ZERO_INIT_RESIDUAL = None
    # BatchNorm inside the heads (mrcnn_*_bn*). Off by default, whatever TRAIN_BN says: the
    # heads' training batches (sampled ROIs, 1/3 positive) differ from their inference batches
    # (proposals, detections), so batch statistics learnt in training mislead inference. Off,
    # they keep their loaded (or identity) statistics, as in Matterport with TRAIN_BN=False.
    # Measured: the synthetic-nuclei learning test found 5-70% of nuclei with trainable head
    # BN over three seeds, 82-89% without.
    TRAIN_HEAD_BN = False
    GRADIENT_CLIP_NORM = 5.0
    # Arithmetic of the convolutions: "float32", "bfloat16" (Keras mixed_bfloat16: float32
    # weights and boxes, bfloat16 convolutions; about 1.7x faster on CPUs with AVX512-BF16 or
    # AMX, slower on CPUs without), "float16" (mixed_float16 with loss scaling: GPUs of
    # compute capability 7.x) or "auto" (mrcnn.precision: bfloat16 on GPUs >= 8.0 and on CPUs
    # with native bfloat16, float16 on GPUs 7.x, else float32). Weight files are the same
    # in every precision.
    COMPUTE_DTYPE = "float32"
    # Linear warm-up over this many optimizer steps, then x0.1 at each listed global step.
    LEARNING_RATE_WARMUP_STEPS = 0
    LEARNING_RATE_DECAY_STEPS = ()
    # "step" (the above) or "cosine": after the warm-up, each train() stage decays from its
    # learning rate to 0 along half a cosine, over its epochs or its time budget, whichever
    # ends first (mrcnn.schedules); LEARNING_RATE_DECAY_STEPS is then not used.
    LEARNING_RATE_SCHEDULE = "step"
    # TensorBoard detection metrics: every N epochs (0 = off), detect on the first
    # EVAL_IMAGES validation images and log the DSB score, AP50, IoU, Dice and overlays.
    EVAL_EVERY_N_EPOCHS = 0
    EVAL_IMAGES = 4
    # Epoch checkpoints kept in a run folder: after each epoch's checkpoint is written, all but
    # the newest N are deleted (a nucleus model's is 53 MB, so 125 epochs write 6.6 GB). None
    # keeps every one, as Matterport does.
    CHECKPOINTS_TO_KEEP = None
    # Data loading: worker processes for keras.utils.PyDataset (0 = one thread of the training
    # process). A process was slower on 2 cores: nucleus steps of 0.35-0.39 s instead of
    # 0.27-0.28 s (AMD EPYC family 26, bfloat16, docs/results.md).
    WORKERS = 0
    # Training and validation images are kept in memory, decoded and normalised, after their
    # first read, up to this many megabytes per data loader (0 = read every time). DSB2018's
    # 563 training images take 262 MB.
    IMAGE_CACHE_MB = 1024

    @property
    def BATCH_SIZE(self):  # noqa: N802 (Matterport's name)
        """Images per step: IMAGES_PER_GPU x GPU_COUNT."""
        return self.IMAGES_PER_GPU * self.GPU_COUNT

    @property
    def IMAGE_SHAPE(self):  # noqa: N802
        """[H, W, C] of a training image: IMAGE_MIN_DIM squared in crop mode, else
        IMAGE_MAX_DIM squared (the square mode's size)."""
        side = self.IMAGE_MIN_DIM if self.IMAGE_RESIZE_MODE == "crop" else self.IMAGE_MAX_DIM
        return np.array([side, side, self.IMAGE_CHANNEL_COUNT])

    @property
    def IMAGE_META_SIZE(self):  # noqa: N802
        """Length of the image meta vector (see mrcnn.ops.image)."""
        return image_meta_size(self.NUM_CLASSES)

    def to_dict(self):
        """All UPPER_CASE fields (including computed ones) as a plain dict."""
        return {a: getattr(self, a) for a in sorted(dir(self))
                if a.isupper() and not callable(getattr(self, a))}

    def display(self):
        """Print every field, one per line."""
        print("\nConfigurations:")
        for key, val in self.to_dict().items():
            print(f"{key:30} {val}")
        print("\n")

    def validate(self):
        """Raise ValueError naming the first inconsistent field and how to fix it."""
        def fail(msg):
            raise ValueError(f"{type(self).__name__}: {msg}")

        def require_whole(field, minimum, meaning=""):
            value = getattr(self, field)
            if int(value) != value or value < minimum:
                fail(f"{field}={value!r}; use a whole number >= {minimum}{meaning}.")

        if not self.NAME:
            fail("NAME is not set; give the config a short name such as 'nucleus'.")
        if self.NUM_CLASSES < 2:
            fail(f"NUM_CLASSES={self.NUM_CLASSES}; it counts the background, so use >= 2.")
        if self.GPU_COUNT < 1 or self.IMAGES_PER_GPU < 1:
            fail("GPU_COUNT and IMAGES_PER_GPU must be >= 1.")
        if self.IMAGE_RESIZE_MODE not in RESIZE_MODES:
            fail(f"IMAGE_RESIZE_MODE={self.IMAGE_RESIZE_MODE!r}; use one of {RESIZE_MODES}.")
        if self.IMAGE_RESIZE_MODE in ("square", "crop"):
            dim = self.IMAGE_MAX_DIM if self.IMAGE_RESIZE_MODE == "square" else self.IMAGE_MIN_DIM
            if dim % 64:
                fail(f"image side {dim} must be a multiple of 64 (P6 has stride 64).")
        if self.IMAGE_RESIZE_MODE == "square" and self.IMAGE_MIN_DIM and \
                self.IMAGE_MIN_DIM > self.IMAGE_MAX_DIM:
            fail("IMAGE_MIN_DIM is larger than IMAGE_MAX_DIM.")
        if len(self.RPN_ANCHOR_SCALES) != 5:
            fail(f"RPN_ANCHOR_SCALES has {len(self.RPN_ANCHOR_SCALES)} entries; give one scale "
                 "per level, P2..P6 (5 anchor sides in pixels).")
        require_whole("RPN_ANCHOR_SCALES_PER_OCTAVE", 1)
        if not 0 < self.ROI_POSITIVE_RATIO <= 1:
            fail("ROI_POSITIVE_RATIO must be in (0, 1].")
        require_whole("VALIDATION_EVERY_N_EPOCHS", 1)
        if not self.IMAGE_CACHE_MB >= 0:
            fail(f"IMAGE_CACHE_MB={self.IMAGE_CACHE_MB!r}; use megabytes >= 0 (0 = no cache).")
        if self.ROI_POSITIVE_SAMPLING not in POSITIVE_SAMPLING:
            fail(f"ROI_POSITIVE_SAMPLING={self.ROI_POSITIVE_SAMPLING!r}; use one of "
                 f"{POSITIVE_SAMPLING}.")
        if not 0 < self.RPN_NEGATIVE_IOU <= self.RPN_POSITIVE_IOU <= 1:
            fail(f"RPN_NEGATIVE_IOU={self.RPN_NEGATIVE_IOU!r} and RPN_POSITIVE_IOU="
                 f"{self.RPN_POSITIVE_IOU!r} must satisfy 0 < negative <= positive <= 1.")
        if self.TRAIN_ROIS_PER_IMAGE < 1 or self.POST_NMS_ROIS_TRAINING < 1:
            fail("TRAIN_ROIS_PER_IMAGE and POST_NMS_ROIS_TRAINING must be >= 1.")
        require_whole("MASK_IMAGE_CHANNELS", 0, " (0 = the mask head without the image)")
        if not (isinstance(self.SEPARABLE_PYRAMID_CONVS, bool)
                or self.SEPARABLE_PYRAMID_CONVS == "rpn"):
            fail(f"SEPARABLE_PYRAMID_CONVS={self.SEPARABLE_PYRAMID_CONVS!r}; use False, 'rpn' "
                 "(the RPN's shared conv only) or True (the FPN's output convs too).")
        if self.MASK_HEAD_NORM not in (None, "group"):
            fail(f"MASK_HEAD_NORM={self.MASK_HEAD_NORM!r}; use None (BatchNorm, Matterport's) "
                 "or 'group'.")
        for field in ("MASK_BOUNDARY_WEIGHT", "MASK_CONTOUR_WEIGHT", "MASK_DICE_WEIGHT"):
            if getattr(self, field) < 0:
                fail(f"{field}={getattr(self, field)!r} must be >= 0 (0 = off).")
        if self.OPTIMIZER not in OPTIMIZERS:
            fail(f"OPTIMIZER={self.OPTIMIZER!r}; use one of {OPTIMIZERS}.")
        if self.LEARNING_RATE_SCHEDULE not in SCHEDULES:
            fail(f"LEARNING_RATE_SCHEDULE {self.LEARNING_RATE_SCHEDULE!r}; use one of "
                 f"{SCHEDULES}.")
        if self.MASK_TRAIN_ROIS_PER_IMAGE is not None and self.MASK_TRAIN_ROIS_PER_IMAGE < 1:
            fail("MASK_TRAIN_ROIS_PER_IMAGE must be None (every positive ROI) or >= 1.")
        if self.PRE_NMS_LIMIT < self.POST_NMS_ROIS_INFERENCE:
            fail("PRE_NMS_LIMIT must be >= POST_NMS_ROIS_INFERENCE.")
        if self.DETECTION_MAX_INSTANCES > self.POST_NMS_ROIS_INFERENCE:
            fail("DETECTION_MAX_INSTANCES cannot exceed POST_NMS_ROIS_INFERENCE.")
        require_whole("DETECTION_BOX_REFINEMENTS", 0, " (extra box-head passes)")
        require_whole("DETECTION_MIN_MASK_AREA", 0, " (pixels; 0 = off)")
        covered = self.DETECTION_MAX_COVERED_FRACTION
        if covered is not None and (isinstance(covered, bool) or not (
                isinstance(covered, (int, float)) and 0 <= covered <= 1)):
            fail(f"DETECTION_MAX_COVERED_FRACTION={covered!r}; use None (off) or a fraction "
                 "in [0, 1].")
        band = self.DETECTION_MASK_INTENSITY_BAND
        if band is not None and not (
                isinstance(band, (list, tuple)) and len(band) == 2 and
                all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in band) and
                0 <= band[0] <= band[1] <= 1):
            fail(f"DETECTION_MASK_INTENSITY_BAND={band!r}; use None (off) or (low, high) "
                 "probabilities with 0 <= low <= high <= 1, such as (0.25, 0.6).")
        require_whole("DETECTION_MASK_INTENSITY_MARGIN", 0, " (pixels around the box)")
        if self.BOX_HEAD_CONTEXT is not None and not self.BOX_HEAD_CONTEXT > 1:
            fail(f"BOX_HEAD_CONTEXT={self.BOX_HEAD_CONTEXT!r}; use None or a factor > 1 (the "
                 "pooled surroundings' side over the ROI's).")
        if self.MASK_SHAPE[0] != 2 * self.MASK_POOL_SIZE or \
                self.MASK_SHAPE[1] != 2 * self.MASK_POOL_SIZE:
            fail(f"MASK_SHAPE {list(self.MASK_SHAPE)} must be twice MASK_POOL_SIZE "
                 f"({self.MASK_POOL_SIZE}): the mask head upsamples once.")
        if len(np.asarray(self.MEAN_PIXEL).ravel()) != self.IMAGE_CHANNEL_COUNT:
            fail(f"MEAN_PIXEL has {len(np.asarray(self.MEAN_PIXEL).ravel())} values but "
                 f"IMAGE_CHANNEL_COUNT is {self.IMAGE_CHANNEL_COUNT}.")
        unknown = set(self.LOSS_WEIGHTS) - set(Config.LOSS_WEIGHTS)
        if unknown:
            fail(f"LOSS_WEIGHTS has unknown keys {sorted(unknown)}; "
                 f"use {sorted(Config.LOSS_WEIGHTS)}.")
        if self.BACKBONE_NORM is not None and self.BACKBONE_NORM not in NORMS:
            fail(f"BACKBONE_NORM={self.BACKBONE_NORM!r}; use one of {NORMS} or None "
                 "(follow TRAIN_BN).")
        if self.BACKBONE_ZERO_INIT_RESIDUAL not in (None, True, False):
            fail(f"BACKBONE_ZERO_INIT_RESIDUAL={self.BACKBONE_ZERO_INIT_RESIDUAL!r}; use None "
                 "(the backbone's default), True or False (null/true/false on the command "
                 "line).")
        if self.IMAGE_NORMALIZATION not in IMAGE_NORMALIZATIONS:
            fail(f"IMAGE_NORMALIZATION={self.IMAGE_NORMALIZATION!r}; use one of "
                 f"{IMAGE_NORMALIZATIONS}.")
        if self.COMPUTE_DTYPE not in COMPUTE_DTYPES:
            fail(f"COMPUTE_DTYPE={self.COMPUTE_DTYPE!r}; use one of {COMPUTE_DTYPES}.")
        jitter = self.IMAGE_SCALE_JITTER
        if jitter is not None and not (len(jitter) == 2 and 0 < jitter[0] <= jitter[1]):
            fail(f"IMAGE_SCALE_JITTER={jitter!r}; use None or (low, high) with "
                 "0 < low <= high.")
        if not 0 <= self.COPY_PASTE_PROBABILITY <= 1:
            fail(f"COPY_PASTE_PROBABILITY={self.COPY_PASTE_PROBABILITY!r}; use a probability "
                 "from 0 (off) to 1.")
        require_whole("COPY_PASTE_MARGIN", 0, " (pixels)")
        if self.CHECKPOINTS_TO_KEEP is not None:
            require_whole("CHECKPOINTS_TO_KEEP", 1, " or None to keep every checkpoint")
        target, scales = self.OBJECT_SIZE_TARGET, self.OBJECT_SCALE_RANGE
        if target is not None and not target > 0:
            fail(f"OBJECT_SIZE_TARGET={target!r}; use None or a diameter in pixels > 0.")
        if not (len(scales) == 2 and 0 < scales[0] <= scales[1]):
            fail(f"OBJECT_SCALE_RANGE={scales!r}; use (low, high) with 0 < low <= high.")
        half_area = self.HALF_SCALE_PASS_MIN_AREA
        if half_area is not None:
            if not half_area >= 0:
                fail(f"HALF_SCALE_PASS_MIN_AREA={half_area!r}; use None (off) or a number of "
                     "pixels >= 0.")
            if inference_resize_mode(self.IMAGE_RESIZE_MODE) != "pad64":
                fail(f"HALF_SCALE_PASS_MIN_AREA needs IMAGE_RESIZE_MODE 'pad64' or 'crop' "
                     f"(images resized by a free factor), not {self.IMAGE_RESIZE_MODE!r}.")
        if self.MAX_GT_INSTANCES < 1:
            fail("MAX_GT_INSTANCES must be >= 1.")
        return self


def anchor_settings(config):
    """The anchors' keyword arguments for :func:`mrcnn.ops.anchors.pyramid_anchors` (and the
    model's AnchorGenerator): scales, ratios, the P2..P6 strides of the config's backbone, the
    anchor stride and the octave multipliers. The one place anchors are derived from a Config."""
    return {"scales": [float(s) for s in config.RPN_ANCHOR_SCALES],
            "ratios": [float(r) for r in config.RPN_ANCHOR_RATIOS],
            "strides": pyramid_strides(backbones.get_backbone_spec(config.BACKBONE).strides),
            "anchor_stride": int(config.RPN_ANCHOR_STRIDE),
            "octave": octave_scales(config.RPN_ANCHOR_SCALES_PER_OCTAVE)}


def inference_resize_mode(mode):
    """The resize mode inference uses for a training mode: whole images, so a random ``crop``
    becomes ``pad64`` (the same scale, padded to a multiple of 64); other modes are kept."""
    return "pad64" if mode == "crop" else mode


def inference_config(config, **fields):
    """The inference twin of a training ``config``: one image per batch on one device, whole
    images (:func:`inference_resize_mode`), then ``fields`` on top. Fields set on the
    ``config`` instance itself (``config.BACKBONE = ...``) are kept.

    Returns:
        a validated instance of a subclass of ``type(config)``.
    """
    changes = {key: value for key, value in vars(config).items() if key.isupper()}
    changes.update(IMAGES_PER_GPU=1, GPU_COUNT=1,
                   IMAGE_RESIZE_MODE=inference_resize_mode(config.IMAGE_RESIZE_MODE))
    changes.update(fields)
    cls = type(config)
    name = cls.__name__ if cls.__name__.endswith("Inference") else cls.__name__ + "Inference"
    return type(name, (cls,), changes)().validate()
