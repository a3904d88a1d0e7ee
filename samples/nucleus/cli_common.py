"""What every ``train.py`` command shares: configs from overrides, a run's saved config,
the train/val datasets, checkpoints, peak memory.

The run's config overrides are written to ``<run folder>/run_config.json`` so ``detect`` and
``evaluate`` rebuild the same network (backbone, normalisation, scale, anchors) from a
checkpoint path alone.
"""

import json
import logging
import os
import resource
import time

import numpy as np

from mrcnn.atomic import atomic_target
from mrcnn.config import inference_config
from mrcnn.evaluation import write_json
from mrcnn.training import find_final_weights
from samples.nucleus.nucleus import (INFERENCE_FIELDS, NucleusConfig, NucleusDataset,
                                     set_kind_repeat_factors)

log = logging.getLogger("nucleus")

RUN_CONFIG_FILE = "run_config.json"
# What kind of run it is (from scratch or not) and its stages (layers, learning rate, end
# epoch, the epoch each ended at), so that --weights last continues the same regime.
RUN_STATE_FILE = "run_state.json"

# End epochs of the two training stages (Mask R-CNN's stage 1 and 2; the U-Net's one run ends
# at the second) when --heads-epochs / --all-epochs are not given. With --time-budget they are
# out of reach, so the budget ends each stage (Mask R-CNN's stage 1 at 75 % of it) and
# `train --time-budget 60` trains 60 minutes on a fast CPU too: 20 + 20 epochs took about
# 30 minutes on a 2-core Intel Xeon with AMX in float32.
DEFAULT_END_EPOCHS = (20, 40)
BUDGET_END_EPOCHS = (100000, 200000)


def parse_overrides(pairs):
    """``["KEY=VALUE", ...]`` -> dict; values parsed as JSON when they parse, else strings.

    Raises:
        ValueError: not KEY=VALUE, or no such Config field.
    """
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
    """A validated NucleusConfig with ``overrides`` applied, or its inference twin
    (:func:`mrcnn.config.inference_config` with the nucleus inference settings, which the
    overrides may change)."""
    fields = dict(overrides)
    for key, value in fields.items():
        if isinstance(getattr(NucleusConfig, key, None), np.ndarray):
            fields[key] = np.array(value)
    config = type(NucleusConfig.__name__, (NucleusConfig,), fields)().validate()
    if not inference:
        return config
    chosen = {k: fields[k] for k in INFERENCE_FIELDS if k in fields}
    return inference_config(config, **{**INFERENCE_FIELDS, **chosen})


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


def load_run_state(weights_path):
    """The run_state.json beside a checkpoint, or None (runs saved before it existed)."""
    path = os.path.join(os.path.dirname(os.path.abspath(weights_path)), RUN_STATE_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def save_run_state(log_dir, state):
    write_json(os.path.join(log_dir, RUN_STATE_FILE), state)


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in run_config.json")


def resolve_checkpoint(weights, logs, name=NucleusConfig.NAME):
    """'last' -> the newest run's final weights under logs (its newest checkpoint, or that
    checkpoint's average when training wrote one: ``train --average-last``); else the path,
    which must exist."""
    if weights == "last":
        path = find_final_weights(logs, name)
        log.info("--weights last: %s", path)
        return path
    if not os.path.exists(weights):
        raise FileNotFoundError(f"--weights {weights}: no such file")
    return weights


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


def unlabelled_policy(args):
    """Images without masks in a training or evaluation subset: an error, or skipped with
    --skip-unlabelled."""
    return "skip" if getattr(args, "skip_unlabelled", False) else "error"


def load_train_val(args):
    """(train, val or None) prepared datasets from --dataset, --subset, --train-fraction,
    --seed and --val-subset (shared by Mask R-CNN and U-Net training)."""
    unlabelled = unlabelled_policy(args)
    train = NucleusDataset().load_nucleus(args.dataset, args.subset, unlabelled)
    train.prepare()
    if args.train_fraction < 1:
        train = select_fraction(train, args.train_fraction, args.seed)
    if getattr(args, "balance_kinds", False):
        for kind, (count, factor) in set_kind_repeat_factors(train).items():
            log.info("--balance-kinds: %d %s images, each seen %.2fx as often", count, kind,
                     factor)
    val = None
    if args.val_subset:
        val = NucleusDataset().load_nucleus(args.dataset, args.val_subset, unlabelled)
        val.prepare()
    return train, val


def report_skipped(dataset, unreadable):
    """The end-of-training summary of the images left out: without masks, unreadable."""
    unlabelled = getattr(dataset, "skipped", [])
    if unlabelled or unreadable:
        print(f"Skipped {len(unlabelled)} image(s) without masks and {len(unreadable)} "
              f"unreadable image(s): " + ", ".join(list(unlabelled) + sorted(unreadable)))


def peak_memory_mb():
    """Peak resident memory of this process in MB (Linux ru_maxrss is in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_train_summary(logs, started, epochs=None):
    """``<logs>/peak_memory.json``: peak MB, minutes and end epoch of this training process."""
    write_json(os.path.join(logs, "peak_memory.json"),
               {"peak_mb": peak_memory_mb(), "minutes": (time.time() - started) / 60,
                "epochs": epochs})
