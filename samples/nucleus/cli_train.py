"""``train.py train``: Mask R-CNN on DSB2018-layout nuclei, from scratch or from weights.

The run's config overrides are written to ``<run folder>/run_config.json`` so ``detect`` and
``evaluate`` rebuild the same network (backbone, scale, anchors) from a checkpoint path alone.
"""

import json
import logging
import os
import time

import numpy as np

from nucleus import (NucleusConfig, NucleusDataset, NucleusInferenceConfig,
                     set_kind_repeat_factors)

from mrcnn import model as modellib
from mrcnn.atomic import atomic_target
from mrcnn.data.augment import default_augmentation
from mrcnn.modeling.factory import backbone_norm

log = logging.getLogger("nucleus")

RUN_CONFIG_FILE = "run_config.json"

# From scratch on a CPU: a light ResNet with GroupNorm, 256 px crops of images scaled x2,
# warm-up. Measured on DSB2018 (README "Results"): the same 60-minute run with BatchNorm
# scored 0.217 on our val split, with GroupNorm 0.441 — batch statistics of 2 crops of very
# different image kinds do not match the moving averages used at inference, GroupNorm has no
# such gap. BACKBONE_NORM "group" applies to whatever --backbone is chosen.
SCRATCH_OVERRIDES = {
    "BACKBONE": "resnet18",
    "BACKBONE_NORM": "group",
    "IMAGE_MIN_DIM": 256,
    "IMAGE_MAX_DIM": 256,
    "IMAGES_PER_GPU": 2,
    "LEARNING_RATE": 0.01,
    "LEARNING_RATE_WARMUP_STEPS": 200,
    "POST_NMS_ROIS_TRAINING": 600,
    "TRAIN_ROIS_PER_IMAGE": 128,
    # 128 instead of 256 channels in the FPN: with a 128-channel mask head a training step on
    # two 256 crops took 0.65 s instead of 1.24 s (measured), so twice the steps fit a CPU
    # budget. Once the RPN has learnt, up to 42 positive ROIs per crop go through the 4 mask
    # convs and they dominate the step (0.78 s with a trained model); 64 channels (enough for
    # blob-shaped nuclei) bring it to 0.61 s (benchmarks/bench_nucleus_step.py).
    "TOP_DOWN_PYRAMID_SIZE": 128,
    "MASK_HEAD_CHANNELS": 64,
}


# Matterport's COCO file has a 512-channel shared RPN conv (NucleusConfig uses 256) and
# 256-channel FPN and mask head; the architecture must match for those layers to load.
COCO_OVERRIDES = {
    "RPN_CONV_CHANNELS": 512,
    "TOP_DOWN_PYRAMID_SIZE": 256,
    "MASK_HEAD_CHANNELS": 256,
    "FPN_CLASSIF_FC_LAYERS_SIZE": 1024,
}


def parse_overrides(pairs):
    """``["KEY=VALUE", ...]`` -> dict; values parsed as JSON when they parse, else strings."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        key = key.strip().upper()
        if not hasattr(NucleusConfig, key):
            raise ValueError(f"--set {key}: no such config field")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def make_config(overrides, inference=False):
    """A NucleusConfig (or NucleusInferenceConfig) with ``overrides`` applied."""
    base = NucleusInferenceConfig if inference else NucleusConfig
    fields = dict(overrides)
    if inference:
        # Training-only sizes do not apply: inference sees whole images padded to 64.
        for key in ("IMAGE_MIN_DIM", "IMAGE_MAX_DIM", "IMAGES_PER_GPU", "IMAGE_RESIZE_MODE"):
            fields.pop(key, None)
    for key, value in fields.items():
        if isinstance(getattr(base, key, None), np.ndarray):
            fields[key] = np.array(value)
    config = type(base.__name__, (base,), fields)()
    return config.validate()


def run_config_path(weights_path):
    return os.path.join(os.path.dirname(os.path.abspath(weights_path)), RUN_CONFIG_FILE)


def load_run_overrides(weights_path):
    """The overrides saved beside a checkpoint ({} when there is no run_config.json)."""
    path = run_config_path(weights_path)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)["overrides"]


def save_run_overrides(log_dir, overrides):
    path = os.path.join(log_dir, RUN_CONFIG_FILE)
    with atomic_target(path, ".json.tmp") as tmp, open(tmp, "w") as f:
        json.dump({"overrides": overrides}, f, indent=1, default=_jsonable)


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in run_config.json")


def select_fraction(dataset, fraction, seed):
    """A new prepared NucleusDataset with a seeded ``fraction`` of ``dataset``'s images."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--train-fraction must be in (0, 1], got {fraction}")
    count = max(1, int(round(fraction * len(dataset.image_ids))))
    keep = np.sort(np.random.RandomState(seed).permutation(dataset.image_ids)[:count])
    subset = NucleusDataset()
    subset.add_class("nucleus", 1, "nucleus")
    for i in keep:
        info = dataset.image_info[i]
        subset.add_image(info["source"], image_id=info["id"], path=info["path"])
    subset.prepare()
    return subset


def load_train_val(args):
    """(train, val or None) prepared datasets from --dataset, --subset, --train-fraction,
    --seed and --val-subset (shared by Mask R-CNN and U-Net training)."""
    train = NucleusDataset().load_nucleus(args.dataset, args.subset)
    train.prepare()
    if args.train_fraction < 1:
        train = select_fraction(train, args.train_fraction, args.seed)
    if getattr(args, "balance_kinds", False):
        for kind, (count, factor) in set_kind_repeat_factors(train).items():
            log.info("--balance-kinds: %d %s images, each seen %.2fx as often", count, kind,
                     factor)
    val = None
    if args.val_subset:
        val = NucleusDataset().load_nucleus(args.dataset, args.val_subset)
        val.prepare()
    return train, val


def resolve_weights(model, weights, logs):
    """Load --weights into a training model. Returns (loaded_path or None, from_scratch)."""
    if weights in ("none", "imagenet"):
        return None, weights == "none"
    if weights == "last":
        path = model.find_last()
    elif weights == "coco":
        from mrcnn.weights import COCO_WEIGHTS_URL, download_weights
        path = download_weights(COCO_WEIGHTS_URL, None)
    else:
        path = weights
    if not os.path.exists(path):
        raise FileNotFoundError(f"--weights {path}: no such file")
    exclude = None
    if weights == "coco":
        # COCO has 81 classes; the class-specific head layers cannot be reused.
        exclude = ["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask"]
    model.load_weights(path, by_name=True, exclude=exclude)
    if weights == "coco":
        model.set_log_dir()  # a new run, epoch 0
    return path, False


def peak_memory_mb():
    """Peak resident memory of this process in MB (Linux ru_maxrss is in KB)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_train_summary(logs, started, epochs=None):
    """``<logs>/peak_memory.json``: peak MB, minutes and end epoch of this training process."""
    from mrcnn.evaluation import write_json
    write_json(os.path.join(logs, "peak_memory.json"),
               {"peak_mb": peak_memory_mb(), "minutes": (time.time() - started) / 60,
                "epochs": epochs})


def run_train(args):
    started = time.time()
    if getattr(args, "model", "maskrcnn") == "unet":
        from cli_unet import run_train_unet
        out_dir, epochs = run_train_unet(args)
        write_train_summary(args.logs, started, epochs)
        return out_dir
    overrides = {}
    if args.weights == "none":
        overrides.update(SCRATCH_OVERRIDES)
    if args.weights == "coco":
        overrides.update(COCO_OVERRIDES)
    if args.weights == "last" or (args.weights not in ("none", "imagenet", "coco")
                                  and os.path.exists(str(args.weights))):
        path = args.weights
        if args.weights == "last":
            path = modellib.find_last_checkpoint(args.logs, NucleusConfig.NAME)
        overrides.update(load_run_overrides(path))
    if args.backbone:
        overrides["BACKBONE"] = args.backbone
    if args.steps_per_epoch:
        overrides["STEPS_PER_EPOCH"] = args.steps_per_epoch
    if args.warmup_steps is not None:
        overrides["LEARNING_RATE_WARMUP_STEPS"] = args.warmup_steps
    overrides.update(parse_overrides(args.set))
    config = make_config(overrides)

    train, val = load_train_val(args)
    log.info("%d training images (%s), %d validation images", len(train.image_ids),
             args.subset, len(val.image_ids) if val else 0)

    backbone_weights = "imagenet" if args.weights == "imagenet" else None
    model = modellib.MaskRCNN("training", config, args.logs, backbone_weights=backbone_weights)
    loaded, from_scratch = resolve_weights(model, args.weights, args.logs)
    if loaded:
        log.info("Loaded %s (continuing at epoch %d)", loaded, model.epoch)
    save_run_overrides(model.log_dir, overrides)
    augmentation = default_augmentation(seed=args.seed) if args.augment == "default" else None
    deadline = time.time() + args.time_budget * 60 if args.time_budget else None

    lr = args.lr or config.LEARNING_RATE
    if from_scratch:
        log.info("--weights none: a heads-only stage over a random backbone is pointless, so "
                 "all layers train from the start (backbone normalisation %r, warm-up %d "
                 "steps).", backbone_norm(config), config.LEARNING_RATE_WARMUP_STEPS)
        first_layers = "all"
    else:
        first_layers = "heads"
    stages = [(args.heads_epochs, first_layers, lr, 0.75), (args.all_epochs, "all", lr / 10, 1.0)]
    for end_epoch, layers, stage_lr, budget_share in stages:
        if model.epoch >= end_epoch:
            continue
        budget = None
        if deadline is not None:
            if time.time() >= deadline:
                break
            stage_end = started + budget_share * (deadline - started)
            budget = max(1.0, stage_end - time.time())
        log.info("Stage: layers=%s lr=%g until epoch %d%s", layers, stage_lr, end_epoch,
                 f" or {budget / 60:.1f} min" if budget else "")
        model.train(train, val, learning_rate=stage_lr, epochs=end_epoch, layers=layers,
                    augmentation=augmentation, time_budget_seconds=budget,
                    seed=args.seed, verbose=args.verbose)
    print(f"Training finished after {(time.time() - started) / 60:.1f} min at epoch "
          f"{model.epoch}; last checkpoint: {model.find_last()}")
    write_train_summary(args.logs, started, model.epoch)
    return model


def add_train_arguments(parser):
    parser.add_argument("--dataset", required=True,
                        help="folder holding stage1_train (or the subset folder's parent)")
    parser.add_argument("--model", choices=("maskrcnn", "unet"), default="maskrcnn")
    parser.add_argument("--unet-variant", choices=("boundary", "seed"), default="boundary",
                        help="U-Net: boundary channel + watershed (default) or the seed's")
    parser.add_argument("--subset", default="train")
    parser.add_argument("--val-subset", default="val",
                        help="validation subset for the val losses ('' for none)")
    parser.add_argument("--backbone", default=None,
                        help="registered backbone (default resnet50; with --weights none "
                             "resnet18), trained from scratch with GroupNorm "
                             "(BACKBONE_NORM=group) whatever the backbone")
    parser.add_argument("--weights", default="none",
                        help="none | imagenet | coco | last | PATH (default %(default)s)")
    parser.add_argument("--logs", default="logs", help="run folders go here")
    parser.add_argument("--heads-epochs", type=int, default=20,
                        help="end epoch of stage 1 (heads, or all layers from scratch)")
    parser.add_argument("--all-epochs", type=int, default=40,
                        help="end epoch of stage 2 (all layers, lr/10)")
    parser.add_argument("--steps-per-epoch", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None, help="default: config LEARNING_RATE")
    parser.add_argument("--warmup-steps", type=int, default=None)
    parser.add_argument("--time-budget", type=float, default=None,
                        help="minutes; stage 1 gets 75%%, stage 2 the rest")
    parser.add_argument("--train-fraction", type=float, default=1.0)
    parser.add_argument("--balance-kinds", action="store_true",
                        help="oversample the rare image kinds (histology, brightfield) by "
                             "repeat-factor sampling, factor sqrt(0.5 / kind fraction)")
    parser.add_argument("--augment", choices=("default", "none"), default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override any config field, e.g. --set IMAGE_MIN_SCALE=1")
    parser.add_argument("--verbose", type=int, default=2)
