"""``train.py train``: Mask R-CNN on DSB2018-layout nuclei, from scratch or from weights
(``--model unet`` hands over to :mod:`samples.nucleus.cli_unet`)."""

import logging
import os
import time

from mrcnn import model as modellib
from mrcnn import multi_worker
from mrcnn import weights as weights_lib
from mrcnn.data.augment import AUGMENTATIONS, make_augmentation
from mrcnn.modeling.factory import backbone_norm
from mrcnn.optimizers import OPTIMIZERS
from mrcnn.schedules import SCHEDULES
from mrcnn.training import find_last_checkpoint
from samples.nucleus.cli_common import (BUDGET_END_EPOCHS, DEFAULT_END_EPOCHS,
                                        load_run_overrides, load_run_state, load_train_val,
                                        make_config, parse_overrides, report_skipped,
                                        save_run_overrides, save_run_state,
                                        write_train_summary)
from samples.nucleus.cli_unet import run_train_unet
from samples.nucleus.nucleus import NucleusConfig

log = logging.getLogger("nucleus")

# Each optimizer's learning rate and weight decay, from scratch and fine-tuning (--optimizer
# picks one). SGD's are Matterport's (0.001 fine-tuning, L2 1e-4) and 0.01 from scratch with
# GroupNorm. AdamW (mrcnn.optimizers: decay decoupled, not on biases or norms) at 3e-4 from
# scratch: after 3 epochs (seed 2, float32) the loss was 2.00, against 2.21 at 1e-3 and SGD's
# 2.27; 1e-4 fine-tuning is the usual AdamW rate, not measured here.
OPTIMIZER_RATES = {
    "sgd": {"scratch": {"LEARNING_RATE": 0.01, "WEIGHT_DECAY": 1e-4},
            "fine_tune": {"LEARNING_RATE": 0.001, "WEIGHT_DECAY": 1e-4}},
    "adamw": {"scratch": {"LEARNING_RATE": 3e-4, "WEIGHT_DECAY": 0.05},
              "fine_tune": {"LEARNING_RATE": 1e-4, "WEIGHT_DECAY": 0.05}},
}

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
    "LEARNING_RATE_WARMUP_STEPS": 200,
    "POST_NMS_ROIS_TRAINING": 600,
    "TRAIN_ROIS_PER_IMAGE": 128,
    # 128 instead of 256 channels in the FPN: with a 128-channel mask head a training step on
    # two 256 crops took 0.65 s instead of 1.24 s (measured), so twice the steps fit a CPU
    # budget. Once the RPN has learnt, up to 42 positive ROIs per crop go through the 4 mask
    # convs and they dominate the step (0.78 s with a trained model); 64 channels (enough for
    # blob-shaped nuclei) bring it to 0.61 s (benchmarks/bench_nucleus_step.py).
    # Then 96 FPN channels and a 64-channel shared RPN conv (session 64): the two 3x3 convs
    # at P2 were a third of a float32 detect. Float32 detect 0.83x the time (median 0.236
    # against 0.283 s per val image, alternated, AMD EPYC family 25 model 17), and the README
    # command fitted more epochs: val +0.002 +- 0.004 per image in bfloat16 (86 against 73
    # epochs) and +0.003 +- 0.004 in float32 (68 against 56) (docs/results.md).
    "TOP_DOWN_PYRAMID_SIZE": 96,
    "MASK_HEAD_CHANNELS": 64,
    # A 128-channel shared RPN conv (not 256) and a 256-wide box head (not 1024: its first FC
    # layer ran on 1000 proposals per image): 40 epochs, seed 1, AMD EPYC float32, DSB 0.505
    # vs 0.504 (seed 2: 0.498), detect 0.204 vs 0.266 s per val image evaluated back to back,
    # a training step about 20 % shorter (README Results); 64 since session 64 (above).
    "RPN_CONV_CHANNELS": 64,
    "FPN_CLASSIF_FC_LAYERS_SIZE": 256,
    # One percentile stretch of all channels per image (colour kept): on val as good as no
    # normalisation (24 epochs: 0.482 vs 0.473 / 0.482; 40 epochs: see README Results), and
    # halving every image's exposure cost it 0.002 DSB instead of 0.012-0.017 (README).
    "IMAGE_NORMALIZATION": "stretch",
    # Two anchor sides per level (side and side x 1.41): nuclei fall between the octaves of
    # one side per level, and their outlines gain. Seeded pairs at the same epochs (AMD EPYC,
    # float32): seed 0 +0.013 +- 0.006 DSB per image (histology +0.032), seed 1 0.538 vs 0.502,
    # the 60-minute command 0.543 vs 0.524 (+0.019 +- 0.006, histology +0.042); same epoch
    # cost, detect within 0-9 % (README Results, docs/results.md).
    "RPN_ANCHOR_SCALES_PER_OCTAVE": 2,
    # RPN positives at anchor IoU >= 0.5, not 0.7: a nucleus has 3-5 anchors there instead of
    # about one. Three seeded pairs at fixed epochs (AMD EPYC, float32): +0.012, +0.003,
    # +0.009 DSB per image (39, 38 and the 60-minute command's 53 epochs: 0.552 vs 0.543)
    # (docs/results.md); the labelling is NumPy in the data pipeline, no step cost.
    "RPN_POSITIVE_IOU": 0.5,
    # AdamW: at the same epochs it beat SGD in each of three seeded pairs (38, 39 and 41 epochs,
    # one the 60-minute command: +0.012, +0.014, +0.009 DSB per image; README Results) at the
    # same step cost.
    "OPTIMIZER": "adamw",
    **OPTIMIZER_RATES["adamw"]["scratch"],
    # The mask head also sees the image on each ROI's 28 x 28 mask grid (16 channels), so
    # outlines can follow pixels finer than the stride-4 features. Two seeded pairs (seed 0,
    # AMD EPYC family 26, float32): at 40 + 13 epochs +0.010 +- 0.005 DSB per val image and
    # +0.009 +- 0.004 on 102 training images; in the 60-minute command, where its 5 % longer
    # step fitted 110 instead of 116 epochs, +0.002 +- 0.005 and +0.006 +- 0.004 (README).
    "MASK_IMAGE_CHANNELS": 16,
}

# --keep-checkpoints: epoch checkpoints a run folder keeps (the newest, and at least
# --average-last of them). A nucleus checkpoint is 53 MB, so the README command's 125 epochs
# wrote 6.6 GB with every one kept.
KEEP_CHECKPOINTS = 5

# --average-last: checkpoints of the lr/10 stage averaged into the weights evaluated. Off:
# on DSB2018 val it changed the score by -0.001 +- 0.002 per image over 4 runs (README).
AVERAGE_LAST = 0

# Fields added to SCRATCH_OVERRIDES, or whose value changed (the optimizer's: SGD at lr 0.01
# before AdamW), after run_state.json existed, or free to change on resume: a run saved
# without run_state.json is from scratch if the rest match.
LATER_SCRATCH_FIELDS = ("BACKBONE", "BACKBONE_NORM", "IMAGE_NORMALIZATION", "RPN_CONV_CHANNELS",
                        "TOP_DOWN_PYRAMID_SIZE",
                        "FPN_CLASSIF_FC_LAYERS_SIZE", "OPTIMIZER", "LEARNING_RATE",
                        "WEIGHT_DECAY", "RPN_ANCHOR_SCALES_PER_OCTAVE",
                        "RPN_POSITIVE_IOU", "MASK_IMAGE_CHANNELS")


def saved_run_was_from_scratch(saved_overrides):
    """Whether a run saved before run_state.json existed was trained from scratch: its saved
    overrides hold SCRATCH_OVERRIDES, except the fields in LATER_SCRATCH_FIELDS."""
    return all(saved_overrides.get(k) == v for k, v in SCRATCH_OVERRIDES.items()
               if k not in LATER_SCRATCH_FIELDS)


# Matterport's COCO file has a 512-channel shared RPN conv (NucleusConfig uses 256) and
# 256-channel FPN and mask head; the architecture must match for those layers to load.
COCO_OVERRIDES = {
    "RPN_CONV_CHANNELS": 512,
    "TOP_DOWN_PYRAMID_SIZE": 256,
    "MASK_HEAD_CHANNELS": 256,
    "FPN_CLASSIF_FC_LAYERS_SIZE": 1024,
}


def resolve_weights(model, weights):
    """Load --weights into a training model. Returns the loaded path, or None."""
    if weights in ("none", "imagenet"):
        return None
    if weights == "last":
        path = model.find_last()
    elif weights == "coco":
        path = weights_lib.download_weights(weights_lib.COCO_WEIGHTS_URL, None)
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
    return path


def resumed_checkpoint(args):
    """The checkpoint --weights resumes (``last`` or a path inside a run folder), or None."""
    if args.weights == "last":
        return find_last_checkpoint(args.logs, NucleusConfig.NAME)
    if args.weights not in ("none", "imagenet", "coco") and os.path.exists(str(args.weights)):
        return args.weights
    return None


def plan_stages(args, config, state, from_scratch):
    """The run's stages: ``{"layers", "lr", "end_epoch", "share", "ended_at"}`` each.

    A new run: stage 1 trains the heads (all layers from scratch) at the learning rate to
    --heads-epochs, stage 2 all layers at lr/10 to --all-epochs; an end not given is
    DEFAULT_END_EPOCHS's, or with --time-budget BUDGET_END_EPOCHS's, so that the budget's
    shares end the stages (75 % of it for stage 1). From scratch with the cosine
    schedule (``LEARNING_RATE_SCHEDULE``) there is one stage instead, all layers from the
    learning rate down to 0 by --all-epochs or the time budget. A resumed run keeps its
    saved regime (from scratch or not, learning rates, end epochs, the epoch a stage ended
    at); --heads-epochs / --all-epochs given on the command line move the end of a stage that
    has not ended, and a larger --all-epochs trains a finished run's last stage longer.
    """
    if state is None:
        lr = args.lr or config.LEARNING_RATE
        first = "all" if from_scratch else "heads"
        ends = BUDGET_END_EPOCHS if args.time_budget else DEFAULT_END_EPOCHS
        state = {"from_scratch": from_scratch, "stages": [
            {"layers": first, "lr": lr, "end_epoch": ends[0], "share": 0.75, "ended_at": None},
            {"layers": "all", "lr": lr / 10, "end_epoch": ends[1], "share": 1.0,
             "ended_at": None}]}
        if from_scratch and config.LEARNING_RATE_SCHEDULE == "cosine":
            del state["stages"][0]
            state["stages"][0]["lr"] = lr
    last = state["stages"][-1]
    given_ends = (args.heads_epochs, args.all_epochs)
    if len(state["stages"]) == 1:
        given_ends = (args.all_epochs,)
    for stage, given in zip(state["stages"], given_ends):
        if given is None:
            continue
        if stage["ended_at"] is None:
            stage["end_epoch"] = int(given)
        elif stage is last and int(given) > stage["ended_at"]:
            stage.update(end_epoch=int(given), ended_at=None)
    return state


def average_final_stage(model, state, count):
    """Average the newest ``count`` checkpoints of the last stage (lr/10) once it has ended
    (:meth:`mrcnn.model.MaskRCNN.average_checkpoints`). Returns the file written, or None."""
    if count < 2 or state["stages"][-1]["ended_at"] is None:
        return None
    before = state["stages"][-2]["ended_at"] if len(state["stages"]) > 1 else 0
    return model.average_checkpoints(count, after_epoch=before or 0)


def train_overrides(args):
    """The config overrides of a ``train`` command: the regime's (from scratch, COCO), a
    resumed run's saved ones, then the options and ``--set`` on top.

    Returns:
        ``(overrides, resumed checkpoint or None, saved run state or None, from_scratch)``.
    """
    overrides = {}
    if args.weights == "none":
        overrides.update(SCRATCH_OVERRIDES)
    if args.weights == "coco":
        overrides.update(COCO_OVERRIDES)
    resumed = resumed_checkpoint(args)
    state, from_scratch = None, args.weights == "none"
    if resumed:
        saved = load_run_overrides(resumed)
        overrides.update(saved)
        state = load_run_state(resumed)
        from_scratch = state["from_scratch"] if state else saved_run_was_from_scratch(saved)
    if args.backbone:
        overrides["BACKBONE"] = args.backbone
    if args.steps_per_epoch:
        overrides["STEPS_PER_EPOCH"] = args.steps_per_epoch
    if args.warmup_steps is not None:
        overrides["LEARNING_RATE_WARMUP_STEPS"] = args.warmup_steps
    if args.lr_schedule:
        overrides["LEARNING_RATE_SCHEDULE"] = args.lr_schedule
    if args.optimizer:
        saved_optimizer = overrides.get("OPTIMIZER", NucleusConfig.OPTIMIZER)
        if resumed and args.optimizer != saved_optimizer:
            raise ValueError(f"--optimizer {args.optimizer}: the run resumed from {resumed} "
                             f"trains with {saved_optimizer}; resume it without --optimizer, "
                             "or start a new run.")
        overrides["OPTIMIZER"] = args.optimizer
        if not resumed:
            regime = "scratch" if from_scratch else "fine_tune"
            overrides.update(OPTIMIZER_RATES[args.optimizer][regime])
    keep = getattr(args, "keep_checkpoints", KEEP_CHECKPOINTS)
    overrides["CHECKPOINTS_TO_KEEP"] = max(keep, getattr(args, "average_last", 0)) if keep \
        else None
    overrides.update(parse_overrides(args.set))
    return overrides, resumed, state, from_scratch


def run_train(args, callbacks=()):
    """The ``train`` command; ``callbacks`` (Keras callbacks, the same objects for every
    stage) are added to each stage's fit, as ``MaskRCNN.train(custom_callbacks=...)``."""
    started = time.time()
    if getattr(args, "model", "maskrcnn") == "unet":
        out_dir, epochs = run_train_unet(args)
        write_train_summary(args.logs, started, epochs)
        return out_dir
    overrides, resumed, state, from_scratch = train_overrides(args)
    config = make_config(overrides)

    train, val = load_train_val(args)
    log.info("%d training images (%s), %d validation images", len(train.image_ids),
             args.subset, len(val.image_ids) if val else 0)

    backbone_weights = "imagenet" if args.weights == "imagenet" else None
    model = modellib.MaskRCNN("training", config, args.logs, backbone_weights=backbone_weights)
    loaded = resolve_weights(model, args.weights)
    if loaded:
        log.info("Loaded %s (continuing at epoch %d)", loaded, model.epoch)
    state = plan_stages(args, config, state if model.epoch else None, from_scratch)
    chief = multi_worker.cluster()[2]     # other workers of a cluster write nothing
    if chief:
        save_run_overrides(model.log_dir, overrides)
        save_run_state(model.log_dir, state)
    augmentation = make_augmentation(args.augment, seed=args.seed)
    deadline = time.time() + args.time_budget * 60 if args.time_budget else None
    if state["from_scratch"]:
        log.info("From scratch: a heads-only stage over a random backbone is pointless, so all "
                 "layers train from the start (backbone normalisation %r, warm-up %d steps).",
                 backbone_norm(config), config.LEARNING_RATE_WARMUP_STEPS)
    skipped = set()
    for stage in state["stages"]:
        if stage["ended_at"] is None and model.epoch >= stage["end_epoch"]:
            stage["ended_at"] = stage["end_epoch"]  # killed after its last checkpoint
        if stage["ended_at"] is not None:
            continue
        budget = None
        if deadline is not None:
            if time.time() >= deadline:
                break
            stage_end = started + stage["share"] * (deadline - started)
            budget = max(1.0, stage_end - time.time())
        until = []
        if stage["end_epoch"] < BUDGET_END_EPOCHS[0]:
            until.append(f"epoch {stage['end_epoch']}")
        if budget:
            until.append(f"{budget / 60:.1f} min")
        log.info("Stage: layers=%s lr=%g until %s", stage["layers"], stage["lr"],
                 " or ".join(until))
        history = model.train(train, val, learning_rate=stage["lr"],
                              epochs=stage["end_epoch"], layers=stage["layers"],
                              augmentation=augmentation, custom_callbacks=list(callbacks),
                              time_budget_seconds=budget, seed=args.seed,
                              verbose=args.verbose)
        skipped.update(history.skipped_images)
        stage["ended_at"] = model.epoch
        if chief:
            save_run_state(model.log_dir, state)
    report_skipped(train, skipped)
    if not chief:
        print(f"Worker finished after {(time.time() - started) / 60:.1f} min at epoch "
              f"{model.epoch}; the chief wrote the checkpoints")
        return model
    averaged = average_final_stage(model, state, args.average_last)
    print(f"Training finished after {(time.time() - started) / 60:.1f} min at epoch "
          f"{model.epoch}; last checkpoint: {model.find_last()}"
          + (f"; averaged weights (used by --weights last): {averaged}" if averaged else ""))
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
    parser.add_argument("--heads-epochs", type=int, default=None,
                        help="end epoch of stage 1 (heads, or all layers from scratch); "
                             "default 20 (with --time-budget: 75 %% of the budget), or the "
                             "resumed run's")
    parser.add_argument("--all-epochs", type=int, default=None,
                        help="end epoch of stage 2 (all layers, lr/10); default 40 (with "
                             "--time-budget: the budget), or the resumed run's")
    parser.add_argument("--skip-unlabelled", action="store_true",
                        help="leave out (and log) training/validation images whose masks/ "
                             "folder is missing or empty, instead of stopping with an error")
    parser.add_argument("--steps-per-epoch", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None, help="default: config LEARNING_RATE")
    parser.add_argument("--warmup-steps", type=int, default=None)
    parser.add_argument("--lr-schedule", choices=SCHEDULES, default=None,
                        help="step: stage 1 at the learning rate, stage 2 at lr/10 (default); "
                             "cosine: from scratch one stage, the learning rate decaying to 0 "
                             "by --all-epochs or the time budget (mrcnn.schedules)")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                        help="adamw (default from scratch): AdamW, lr 3e-4 (1e-4 "
                             "fine-tuning), decoupled weight decay 0.05; sgd (default when "
                             "fine-tuning): SGD with momentum, lr 0.01 from scratch (0.001 "
                             "fine-tuning), L2 decay 1e-4 (--lr and --set still override them)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="minutes; with the step schedule stage 1 gets 75%%, stage 2 the "
                             "rest")
    parser.add_argument("--train-fraction", type=float, default=1.0)
    parser.add_argument("--balance-kinds", action="store_true",
                        help="oversample the rare image kinds (histology, brightfield) by "
                             "repeat-factor sampling, factor sqrt(0.5 / kind fraction)")
    parser.add_argument("--augment", choices=sorted(AUGMENTATIONS), default="default",
                        help="default: Matterport's nucleus augmentation; colour: that plus "
                             "a colour change on half of the crops; none")
    parser.add_argument("--average-last", type=int, default=AVERAGE_LAST, metavar="N",
                        help="when the last stage (lr/10) ends, average the weights of its "
                             "newest N epoch checkpoints into mask_rcnn_nucleus_NNNN_average"
                             ".weights.h5, which --weights last then evaluates; 0 or 1: off "
                             "(default %(default)s)")
    parser.add_argument("--keep-checkpoints", type=int, default=KEEP_CHECKPOINTS, metavar="N",
                        help="keep only the newest N epoch checkpoints of the run (at least "
                             "--average-last); 0 keeps every one (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override any config field, e.g. --set IMAGE_MIN_SCALE=1")
    parser.add_argument("--verbose", type=int, default=2)
