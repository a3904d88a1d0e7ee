"""``train.py compare``: every model trained on the same split with the same budget, evaluated
on the same validation images; a table, a CSV and a speed-versus-accuracy plot.

Each model x seed runs in its own subprocess (``train`` then ``evaluate``), so memory is
measured per model and a killed comparison resumes with the runs not yet done:
``<out>/<model>_seed<S>/metrics.json`` marks a finished run, ``train_done.json`` a finished
training whose evaluation is still missing. A Mask R-CNN training killed under ``--epochs``
continues from its last checkpoint (``train --weights last``: weights, momentum, stage plan);
under ``--time-budget`` it restarts, since the killed attempt's minutes were spent.
``--re-evaluate`` evaluates finished trainings again (on a quiet machine, for timings that
do not measure other jobs' load, or after an inference default changed) without retraining;
each ``metrics.json`` is replaced only once its new evaluation has finished.
"""

import csv
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys

import numpy as np

from mrcnn.atomic import atomic_target
from mrcnn.evaluation import write_json
from mrcnn.training import find_last_checkpoint
from samples.nucleus.nucleus import NucleusConfig

log = logging.getLogger("nucleus")

TRAIN_PY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py")
# ``--models all``: every mission backbone (from scratch, GroupNorm), the fastest from-scratch
# ResNet, the U-Net and Otsu.
ALL_MODELS = ("resnet18", "resnet50", "resnet101", "mobilenet", "mobilenet_v2", "densenet121",
              "densenet169", "densenet201", "unet", "otsu")
KINDS = ("fluorescence", "histology", "brightfield")
TIMED_SIZES = (512, 1024)
COLUMNS = (["model", "seed", "dsb_score"] + [f"dsb_{k}" for k in KINDS] +
           ["ap50", "ap", "iou", "dice", "seconds_per_image"] +
           [f"seconds_{s}" for s in TIMED_SIZES] +
           ["params_m", "peak_train_mb", "peak_eval_mb", "train_minutes", "epochs"])


def _run(cmd, log_path):
    log.info("$ %s", " ".join(cmd))
    with open(log_path, "a") as f:
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    if code:
        raise RuntimeError(f"command failed with exit code {code} (log: {log_path}): "
                           f"{' '.join(cmd)}")


def killed_training(args, model, logs):
    """``(checkpoint, minutes)`` of an interrupted epoch-budgeted Mask R-CNN training that
    can continue, or None. The minutes it trained are its newest checkpoint's time minus the
    time its run folder's config was written."""
    if not args.epochs or model in ("unet", "otsu"):
        return None
    try:
        checkpoint = find_last_checkpoint(logs, NucleusConfig.NAME)
    except FileNotFoundError:
        return None
    config = os.path.join(os.path.dirname(checkpoint), "run_config.json")
    if not os.path.exists(config):
        return None
    return checkpoint, (os.path.getmtime(checkpoint) - os.path.getmtime(config)) / 60


def run_one(args, model, seed, run_dir):
    """Train (unless done) and evaluate one model x seed; returns its metrics dict."""
    metrics_path = os.path.join(run_dir, "metrics.json")
    done_path = os.path.join(run_dir, "train_done.json")
    trained = model == "otsu" or os.path.exists(done_path)
    if os.path.exists(metrics_path) and not (args.re_evaluate and trained):
        log.info("%s seed %d: already done, skipped", model, seed)
        with open(metrics_path) as f:
            return json.load(f)
    logs = os.path.join(run_dir, "logs")
    log_path = os.path.join(run_dir, "output.log")
    common = ["--dataset", args.dataset]
    if not trained:
        killed = killed_training(args, model, logs)
        if killed:
            log.info("%s seed %d: continuing the killed training from %s (%.1f min trained)",
                     model, seed, *killed)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)  # a killed training restarts cleanly
            os.makedirs(run_dir)
        cmd = [sys.executable, TRAIN_PY, "train", *common, "--subset", args.subset,
               "--logs", logs, "--seed", str(seed), "--weights", "last" if killed else "none",
               "--verbose", "2"]
        if model == "unet":
            cmd += ["--model", "unet"]
        else:  # equal budgets: no periodic detection metrics inside the timed training
            cmd += ["--backbone", model, "--set", "EVAL_EVERY_N_EPOCHS=0"]
        if args.time_budget:   # the budget alone ends the stages (cli_common.BUDGET_END_EPOCHS)
            cmd += ["--time-budget", str(args.time_budget)]
        if args.epochs:
            cmd += ["--heads-epochs", str(int(np.ceil(0.75 * args.epochs))),
                    "--all-epochs", str(args.epochs)]
        if args.steps_per_epoch:
            cmd += ["--steps-per-epoch", str(args.steps_per_epoch)]
        for item in args.set or []:
            cmd += ["--set", item]
        _run(cmd, log_path)
        with open(os.path.join(logs, "peak_memory.json")) as f:
            done = json.load(f)
        if killed:
            done.update(minutes=done["minutes"] + killed[1], resumed_at_minute=killed[1])
        write_json(done_path, done)
    os.makedirs(run_dir, exist_ok=True)
    cmd = [sys.executable, TRAIN_PY, "evaluate", *common, "--subset", args.val_subset,
           "--out", metrics_path + ".eval", "--logs", logs,
           "--time-sizes", ",".join(str(s) for s in TIMED_SIZES)]
    cmd += ["--model", model] if model in ("unet", "otsu") else []
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    _run(cmd, log_path)
    with open(metrics_path + ".eval") as f:
        metrics = json.load(f)
    metrics.pop("per_image", None)
    if os.path.exists(done_path):
        with open(done_path) as f:
            metrics.update({f"train_{k}": v for k, v in json.load(f).items()})
    metrics.update(model=model, seed=seed)
    write_json(metrics_path, metrics)
    os.remove(metrics_path + ".eval")
    return metrics


def row_of(m):
    """One results.csv row from a run's metrics.json (missing values are NaN)."""
    nan = float("nan")
    groups = m.get("groups", {})
    timed = m.get("seconds_at_size", {})
    row = {"model": m["model"], "seed": m["seed"], "dsb_score": m["dsb_score"],
           "ap50": m["ap50"], "ap": m["ap"], "iou": m["iou"], "dice": m["dice"],
           "seconds_per_image": m["seconds_per_image"],
           "params_m": m.get("params", 0) / 1e6, "peak_train_mb": m.get("train_peak_mb", 0),
           "peak_eval_mb": m.get("peak_mb", 0),
           "train_minutes": m.get("train_minutes", 0), "epochs": m.get("train_epochs", nan)}
    for kind in KINDS:
        row[f"dsb_{kind}"] = groups.get(kind, {}).get("dsb_score", nan)
    for size in TIMED_SIZES:
        row[f"seconds_{size}"] = timed.get(str(size), nan)
    return row


def summarise(rows):
    """{model: {column: (mean, std, seeds)}} over seeds, in first-seen model order (std is
    the sample standard deviation, ddof=1)."""
    out = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        group = [r for r in rows if r["model"] == model]
        out[model] = {}
        for c in COLUMNS[2:]:
            values = np.array([r[c] for r in group], dtype=float)
            std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
            out[model][c] = (float(np.mean(values)), std, len(values))
    return out


def write_table(path, summary, command):
    def cell(stat, digits):
        mean, std, n = stat
        if not np.isfinite(mean):
            return "–"
        return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"
    sizes = " | ".join(f"s at {s}²" for s in TIMED_SIZES)
    lines = [f"| model | seeds | DSB score | fluo. | histo. | bright. | COCO AP50 | COCO AP | "
             f"pixel IoU | Dice | s / val image | {sizes} | params (M) | peak train MB | "
             "peak eval MB | train min | epochs |",
             "|---" * (16 + len(TIMED_SIZES)) + "|"]
    ranked = sorted(summary.items(), key=lambda kv: -kv[1]["dsb_score"][0])
    for model, s in ranked:
        kinds = " | ".join(cell(s[f"dsb_{k}"], 3) for k in KINDS)
        timed = " | ".join(cell(s[f"seconds_{size}"], 2) for size in TIMED_SIZES)
        lines.append(f"| {model} | {s['dsb_score'][2]} | {cell(s['dsb_score'], 3)} | {kinds} | "
                     f"{cell(s['ap50'], 3)} | {cell(s['ap'], 3)} | {cell(s['iou'], 3)} | "
                     f"{cell(s['dice'], 3)} | {cell(s['seconds_per_image'], 2)} | {timed} | "
                     f"{s['params_m'][0]:.1f} | {s['peak_train_mb'][0]:.0f} | "
                     f"{s['peak_eval_mb'][0]:.0f} | {cell(s['train_minutes'], 1)} | "
                     f"{cell(s['epochs'], 1)} |")
    lines += ["", "Mean ± sample standard deviation over the seeds; per-kind columns are the "
              "DSB score on the validation images of that kind.", "",
              f"Command: `{command}`", ""]
    with atomic_target(path, ".md.tmp") as tmp, open(tmp, "w") as f:
        f.write("\n".join(lines))


def plot(path, summary):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 5))
    markers = "osD^vP*Xph"
    for i, (model, s) in enumerate(summary.items()):
        x, xs, _ = s["seconds_per_image"]
        y, ys, n = s["dsb_score"]
        label = f"{model} ({n} seeds)" if n > 1 else model
        ax.errorbar(x, y, xerr=xs if n > 1 else None, yerr=ys if n > 1 else None,
                    fmt=markers[i % len(markers)], capsize=3, label=label)
    ax.legend(fontsize="small", loc="best")  # a legend, since close points' labels overlap
    ax.set_xscale("log")
    ax.set_xlabel("inference seconds per image (median, CPU)")
    ax.set_ylabel("DSB2018 score (validation)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    try:
        with atomic_target(path, ".tmp.png") as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)


def finished_rows(out_dir):
    """results.csv rows of every finished run under ``out_dir`` (``<model>_seed<S>/
    metrics.json``), so a table made by a later call includes the runs of earlier ones."""
    rows = []
    for name in sorted(os.listdir(out_dir)):
        path = os.path.join(out_dir, name, "metrics.json")
        if os.path.isfile(path):
            with open(path) as f:
                rows.append(row_of(json.load(f)))
    order = {m: i for i, m in enumerate(ALL_MODELS)}
    return sorted(rows, key=lambda r: (order.get(r["model"], len(order)), r["model"], r["seed"]))


def parse_models(text):
    """``--models`` -> list; ``all`` expands to :data:`ALL_MODELS`."""
    models = []
    for item in (m.strip() for m in text.split(",")):
        if item == "all":
            models += [m for m in ALL_MODELS if m not in models]
        elif item and item not in models:
            models.append(item)
    if not models:
        raise ValueError("--models is empty; list backbones, unet, otsu, or 'all'")
    return models


def planned_runs(models, seeds, first_seed=0):
    """[(model, seed)] for seeds ``first_seed .. first_seed + seeds - 1``, seed-major (every
    model's first seed before any second one). Otsu is deterministic: it runs under seed 0
    only, and not at all when the seeds start later."""
    if seeds < 1 or first_seed < 0:
        raise ValueError(f"--seeds {seeds} --first-seed {first_seed}: need at least one seed "
                         "and a first seed >= 0")
    return [(model, seed) for seed in range(first_seed, first_seed + seeds)
            for model in models if not (model == "otsu" and seed > 0)]


def run_compare(args):
    models = parse_models(args.models)
    if not args.time_budget and not args.epochs:
        raise ValueError("give --time-budget MINUTES or --epochs N so every model gets the "
                         "same budget")
    os.makedirs(args.out, exist_ok=True)
    for model, seed in planned_runs(models, args.seeds, args.first_seed):
        run_one(args, model, seed, os.path.join(args.out, f"{model}_seed{seed}"))
    rows = finished_rows(args.out)
    with atomic_target(os.path.join(args.out, "results.csv"), ".csv.tmp") as tmp, \
            open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    summary = summarise(rows)
    command = "python samples/nucleus/train.py " + " ".join(
        shlex.quote(str(a)) for a in getattr(args, "argv", ["compare"]))
    write_table(os.path.join(args.out, "results.md"), summary, command)
    plot(os.path.join(args.out, "speed_vs_accuracy.png"), summary)
    with open(os.path.join(args.out, "results.md")) as f:
        print(f.read())
    return summary


def add_compare_arguments(parser):
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--subset", default="train")
    parser.add_argument("--val-subset", default="val")
    parser.add_argument("--models", default="all",
                        help="comma-separated backbones, 'unet' and 'otsu', or 'all' (default): "
                             + ", ".join(ALL_MODELS))
    parser.add_argument("--time-budget", type=float, default=None, help="minutes per model")
    parser.add_argument("--epochs", type=int, default=None, help="instead of a time budget")
    parser.add_argument("--steps-per-epoch", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=1,
                        help="seeds 0..N-1 per model; the table covers every finished run in "
                             "--out, so a second call with more seeds for a few models adds "
                             "them")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds S..S+N-1 instead of 0..N-1: add seed 1 to a table whose "
                             "seed 0 ran elsewhere, or split the seeds between machines")
    parser.add_argument("--limit", type=int, default=None, help="evaluate on N images only")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="config override passed to every Mask R-CNN run")
    parser.add_argument("--re-evaluate", action="store_true",
                        help="evaluate the finished trainings of the listed models and seeds "
                             "again (scores, and timings on a quiet machine) instead of "
                             "skipping them; nothing is retrained")
    parser.add_argument("--out", default="results/compare")
