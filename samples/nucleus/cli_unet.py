"""``train.py train|evaluate|detect --model unet``: the U-Net baseline on DSB-layout data."""

import datetime
import logging
import os
import time

from mrcnn.data.augment import make_augmentation
from mrcnn.training import find_last
from mrcnn.unet import UNetPredictor, train_unet
from mrcnn.unet.train import MODEL_FILE
from samples.nucleus.cli_common import (BUDGET_END_EPOCHS, DEFAULT_END_EPOCHS, load_train_val,
                                        report_skipped)

log = logging.getLogger("nucleus")


def find_last_unet(logs):
    """Newest ``<logs>/unet<timestamp>/unet.keras``.

    Raises:
        FileNotFoundError: no trained U-Net under ``logs``.
    """
    found = find_last(logs, "unet", MODEL_FILE)
    if found is None:
        raise FileNotFoundError(f"no trained U-Net under {logs}: run train --model unet first")
    return found


def unet_predictor(args):
    path = find_last_unet(args.logs) if args.weights == "last" else args.weights
    log.info("U-Net from %s", path)
    predictor = UNetPredictor(path)
    predictor.num_params = predictor.model.count_params()
    return predictor


def unet_end_epoch(args):
    """The U-Net's last epoch when --all-epochs is not given: 40, or with --time-budget out of
    reach, so that the budget ends training (as for Mask R-CNN's stages)."""
    return BUDGET_END_EPOCHS[1] if args.time_budget else DEFAULT_END_EPOCHS[1]


def run_train_unet(args):
    train, val = load_train_val(args)
    out_dir = os.path.join(args.logs, f"unet{datetime.datetime.now():%Y%m%dT%H%M}")
    augmentation = make_augmentation(args.augment, seed=args.seed)
    started = time.time()
    log.info("U-Net (%s) on %d images, checkpoints and TensorBoard in %s", args.unet_variant,
             len(train.image_ids), out_dir)
    _, history = train_unet(
        train, val, out_dir, variant=args.unet_variant,
        epochs=args.all_epochs or unet_end_epoch(args),
        steps_per_epoch=args.steps_per_epoch or 50, learning_rate=args.lr or 1e-3,
        augmentation=augmentation,
        time_budget_seconds=args.time_budget * 60 if args.time_budget else None,
        seed=args.seed, verbose=args.verbose)
    print(f"U-Net training finished after {(time.time() - started) / 60:.1f} min: "
          f"{os.path.join(out_dir, MODEL_FILE)}")
    report_skipped(train, history.skipped_images)
    return out_dir, len(history.epoch)
