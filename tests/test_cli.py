"""samples/nucleus/train.py end to end on synthetic DSB-layout data: train, resume,
time budget, evaluate, detect (submission, COCO JSON, overlays) and compare."""

import csv
import glob
import json
import os

import numpy as np
import pytest
import skimage.io
import tifffile

from mrcnn.data.synthetic import write_synthetic_dsb
from mrcnn.metrics import read_submission
from samples.nucleus import cli_common
from samples.nucleus import train as nucleus_cli
from tests.conftest import small_cli_sets


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cli_data"))
    write_synthetic_dsb(root, 8, size=96, seed=0)
    write_synthetic_dsb(root, 2, size=80, seed=50, subset="stage1_test")
    return root


@pytest.mark.slow
def test_train_resume_evaluate_detect(data_dir, tmp_path):
    logs = str(tmp_path / "logs")
    base = ["train", "--dataset", data_dir, "--logs", logs, "--backbone", "resnet18",
            "--steps-per-epoch", "2", "--verbose", "0"] + small_cli_sets()
    nucleus_cli.main(base + ["--heads-epochs", "1", "--all-epochs", "2"])
    runs = glob.glob(os.path.join(logs, "nucleus*"))
    assert len(runs) == 1
    assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(runs[0], "*.h5"))) == [
        "mask_rcnn_nucleus_0001.weights.h5", "mask_rcnn_nucleus_0002.weights.h5"]
    saved = json.load(open(os.path.join(runs[0], "run_config.json")))["overrides"]
    assert saved["BACKBONE"] == "resnet18" and saved["BACKBONE_NORM"] == "group"

    # --weights last resumes the same run at epoch 2; the last stage (epochs 2-3) then has
    # two checkpoints, which --average-last 2 averages into the weights evaluate uses
    nucleus_cli.main(base + ["--weights", "last", "--heads-epochs", "1", "--all-epochs", "3",
                             "--average-last", "2"])
    assert os.path.exists(os.path.join(runs[0], "mask_rcnn_nucleus_0003.weights.h5"))
    assert len(glob.glob(os.path.join(logs, "nucleus*"))) == 1
    averaged = os.path.join(runs[0], "mask_rcnn_nucleus_0003_average.weights.h5")
    from mrcnn.weights import read_weights_by_name
    epochs = [read_weights_by_name(os.path.join(runs[0], f"mask_rcnn_nucleus_000{e}.weights.h5"))
              for e in (2, 3)]
    kernel = read_weights_by_name(averaged)["mrcnn_mask"][0]
    assert not np.allclose(epochs[0]["mrcnn_mask"][0], epochs[1]["mrcnn_mask"][0])
    np.testing.assert_allclose(kernel, (epochs[0]["mrcnn_mask"][0] + epochs[1]["mrcnn_mask"][0])
                               / 2, rtol=1e-5, atol=1e-7)

    out = str(tmp_path / "metrics.json")
    nucleus_cli.main(["evaluate", "--dataset", data_dir, "--subset", "val", "--logs", logs,
                      "--out", out, "--min-confidence", "0.1"])
    metrics = json.load(open(out))
    # the command evaluated the averaged weights of the newest checkpoint, rebuilt from
    # run_config.json, on the val split: the library's own evaluation of them agrees
    from mrcnn import model as modellib
    from mrcnn.evaluation import evaluate_dataset
    from samples.nucleus.nucleus import NucleusDataset
    val = NucleusDataset().load_nucleus(data_dir, "val").prepare()
    checkpoint = averaged
    config = cli_common.make_config(dict(cli_common.load_run_overrides(checkpoint),
                                         DETECTION_MIN_CONFIDENCE=0.1), inference=True)
    assert config.BACKBONE == "resnet18" and config.IMAGE_RESIZE_MODE == "pad64"
    infer = modellib.MaskRCNN("inference", config, logs).load_weights(checkpoint)
    expected = evaluate_dataset(val, lambda image: infer.detect([image])[0], warmup=0)
    assert metrics["images"] == len(val.image_ids) >= 1
    for key in ("dsb_score", "ap", "ap50", "iou", "dice"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-6), key
    assert [r["predicted"] for r in metrics["per_image"]] == \
        [r["predicted"] for r in expected["per_image"]]
    assert metrics["params"] == infer.keras_model.count_params()

    det = str(tmp_path / "det")
    nucleus_cli.main(["detect", "--dataset", data_dir, "--subset", "stage1_test", "--logs",
                      logs, "--out", det, "--min-confidence", "0.1", "--tta"])
    rows = list(csv.reader(open(os.path.join(det, "submission.csv"))))
    assert rows[0] == ["ImageId", "EncodedPixels"]
    assert {r[0] for r in rows[1:]} == set(read_submission(os.path.join(det, "submission.csv")))
    assert len({r[0] for r in rows[1:]}) == 2           # every image has a line
    assert len(glob.glob(os.path.join(det, "overlays", "*.png"))) == 2
    assert isinstance(json.load(open(os.path.join(det, "coco_results.json"))), list)

    # predict in tiles smaller than the images: a label image per image, the same size
    pred = tmp_path / "pred"
    images = sorted(glob.glob(os.path.join(data_dir, "stage1_test", "*", "images", "*.png")))
    nucleus_cli.main(["predict", "--input", os.path.join(data_dir, "stage1_test", "*", "images",
                                                         "*.png"), "--logs", logs, "--out",
                      str(pred), "--min-confidence", "0.1", "--tile", "64", "--tile-overlap",
                      "16"])
    for path in images:
        name = os.path.splitext(os.path.basename(path))[0]
        labels = tifffile.imread(pred / "labels" / name / "images" / f"{name}.tif")
        assert labels.shape == skimage.io.imread(path).shape[:2] and labels.dtype == np.uint16
    with pytest.raises(SystemExit, match="--tile 16 must be larger than --tile-overlap"):
        nucleus_cli.main(["predict", "--input", images[0], "--logs", logs, "--out", str(pred),
                          "--tile", "16"])


def test_weights_coco_matches_matterports_architecture(data_dir, tmp_path, monkeypatch):
    """--weights coco: Matterport's file has a 512-channel RPN and 81 classes; the CLI sets the
    RPN width to match and excludes only the class-specific head layers."""
    from mrcnn import model as modellib
    from mrcnn import weights as weights_lib
    small = small_cli_sets(RPN_CONV_CHANNELS=None)
    overrides = dict(cli_common.parse_overrides(small[1::2]), BACKBONE="resnet18",
                     NUM_CLASSES=81, RPN_CONV_CHANNELS=512)
    coco_like = modellib.MaskRCNN("training", cli_common.make_config(overrides), str(tmp_path))
    coco_file = weights_lib.save_weights_by_name(coco_like.keras_model,
                                                 str(tmp_path / "mask_rcnn_coco.h5"))
    monkeypatch.setattr(weights_lib, "download_weights", lambda url, md5_hash=None: coco_file)
    logs = str(tmp_path / "logs")
    nucleus_cli.main(["train", "--dataset", data_dir, "--logs", logs, "--backbone", "resnet18",
                      "--weights", "coco", "--steps-per-epoch", "1", "--heads-epochs", "1",
                      "--all-epochs", "1", "--verbose", "0"] + small)
    run = glob.glob(os.path.join(logs, "nucleus*"))[0]
    saved = json.load(open(os.path.join(run, "run_config.json")))["overrides"]
    assert saved["RPN_CONV_CHANNELS"] == 512
    assert os.path.exists(os.path.join(run, "mask_rcnn_nucleus_0001.weights.h5"))


@pytest.mark.slow
def test_time_budget_stops_with_a_checkpoint(data_dir, tmp_path):
    logs = str(tmp_path / "logs")
    # No end epochs given: the budget alone ends the stages.
    nucleus_cli.main(["train", "--dataset", data_dir, "--logs", logs, "--backbone", "resnet18",
                      "--steps-per-epoch", "50", "--time-budget", "0.3", "--verbose", "0",
                      "--val-subset", ""] + small_cli_sets())
    checkpoints = glob.glob(os.path.join(logs, "nucleus*", "*.weights.h5"))
    assert 1 <= len(checkpoints) <= 3
    state = json.load(open(glob.glob(os.path.join(logs, "nucleus*", "run_state.json"))[0]))
    assert [s["end_epoch"] for s in state["stages"]] == list(cli_common.BUDGET_END_EPOCHS)
    summary = json.load(open(os.path.join(logs, "peak_memory.json")))
    assert summary["minutes"] < 3 and summary["peak_mb"] > 100


def test_compare_writes_table_and_resumes(data_dir, tmp_path):
    out = str(tmp_path / "cmp")
    args = ["compare", "--dataset", data_dir, "--models", "otsu", "--epochs", "1",
            "--out", out]
    nucleus_cli.main(args)
    for name in ("results.csv", "results.md", "speed_vs_accuracy.png"):
        assert os.path.exists(os.path.join(out, name))
    table = open(os.path.join(out, "results.md")).read()
    assert "| otsu |" in table and "DSB score" in table
    assert f"`python samples/nucleus/train.py compare --dataset {data_dir} --models otsu" in table
    marker = os.path.join(out, "otsu_seed0", "metrics.json")
    stamp = os.path.getmtime(marker)
    nucleus_cli.main(args)                      # resumes: nothing is recomputed
    assert os.path.getmtime(marker) == stamp
    before = json.load(open(marker))
    os.utime(marker, (stamp - 100, stamp - 100))
    nucleus_cli.main(args + ["--re-evaluate"])  # evaluated again, same (deterministic) score
    after = json.load(open(marker))
    assert os.path.getmtime(marker) > stamp - 100
    assert after["dsb_score"] == before["dsb_score"]


def test_compare_re_evaluate_never_retrains(tmp_path, monkeypatch):
    """A finished training is only evaluated again; an unfinished one still trains; the old
    metrics.json survives a failed evaluation."""
    from types import SimpleNamespace

    from samples.nucleus import cli_compare
    commands = []

    def fake_run(cmd, log_path):
        commands.append(cmd[2])                 # "train" or "evaluate"
        if cmd[2] == "evaluate":
            if fail_evaluation:
                raise RuntimeError("evaluation failed")
            out = cmd[cmd.index("--out") + 1]
            json.dump({"dsb_score": 0.5}, open(out, "w"))
        else:
            logs = cmd[cmd.index("--logs") + 1]
            os.makedirs(logs, exist_ok=True)
            json.dump({"minutes": 1.0}, open(os.path.join(logs, "peak_memory.json"), "w"))

    monkeypatch.setattr(cli_compare, "_run", fake_run)
    args = SimpleNamespace(dataset="d", subset="train", val_subset="val", epochs=2,
                           time_budget=None, steps_per_epoch=None, set=None, limit=None,
                           re_evaluate=True)
    run_dir = tmp_path / "resnet18_seed0"
    run_dir.mkdir()
    (run_dir / "train_done.json").write_text('{"minutes": 3.0}')
    (run_dir / "metrics.json").write_text('{"dsb_score": 0.4}')
    fail_evaluation = True
    with pytest.raises(RuntimeError):
        cli_compare.run_one(args, "resnet18", 0, str(run_dir))
    assert json.load(open(run_dir / "metrics.json"))["dsb_score"] == 0.4
    fail_evaluation = False
    metrics = cli_compare.run_one(args, "resnet18", 0, str(run_dir))
    assert commands == ["evaluate", "evaluate"]
    assert metrics["dsb_score"] == 0.5 and metrics["train_minutes"] == 3.0
    fresh = tmp_path / "mobilenet_seed0"       # not trained yet: --re-evaluate trains it
    commands.clear()
    cli_compare.run_one(args, "mobilenet", 0, str(fresh))
    assert commands == ["train", "evaluate"]


def test_compare_plans_seeds_from_the_first_seed():
    from samples.nucleus.cli_compare import planned_runs
    assert planned_runs(["resnet18", "otsu"], 2) == [("resnet18", 0), ("otsu", 0),
                                                      ("resnet18", 1)]
    assert planned_runs(["resnet18", "otsu", "unet"], 2, first_seed=1) == [
        ("resnet18", 1), ("unet", 1), ("resnet18", 2), ("unet", 2)]
    with pytest.raises(ValueError, match="first-seed"):
        planned_runs(["resnet18"], 1, first_seed=-1)


def test_compare_continues_a_killed_epoch_budgeted_training(tmp_path):
    from types import SimpleNamespace

    from samples.nucleus.cli_compare import killed_training
    logs = tmp_path / "logs"
    run = logs / "nucleus20260101T0000"
    run.mkdir(parents=True)
    (run / "run_config.json").write_text("{}")
    checkpoint = run / "mask_rcnn_nucleus_0003.weights.h5"
    checkpoint.write_bytes(b"")
    (run / "mask_rcnn_nucleus_0002.weights.h5").write_bytes(b"")
    start = os.path.getmtime(run / "run_config.json")
    os.utime(checkpoint, (start + 600, start + 600))    # trained 10 minutes before the kill
    found, minutes = killed_training(SimpleNamespace(epochs=12), "resnet50", str(logs))
    assert found == str(checkpoint) and minutes == pytest.approx(10)
    # time budgets restart (the killed minutes were spent); the U-Net always restarts
    assert killed_training(SimpleNamespace(epochs=None), "resnet50", str(logs)) is None
    assert killed_training(SimpleNamespace(epochs=12), "unet", str(logs)) is None
    assert killed_training(SimpleNamespace(epochs=12), "resnet50", str(tmp_path / "no")) is None


def test_run_saved_before_run_state_is_recognised_as_from_scratch():
    """A from-scratch run saved before run_state.json (and before the stretch, the 128-channel
    RPN, the 256-wide box head, AdamW, two anchor sides and RPN_POSITIVE_IOU joined the
    defaults) still resumes as from scratch; a run without the from-scratch warm-up, or with
    Matterport's head widths, does not."""
    from samples.nucleus.cli_train import (COCO_OVERRIDES, LATER_SCRATCH_FIELDS,
                                           SCRATCH_OVERRIDES, saved_run_was_from_scratch)
    old = {k: v for k, v in SCRATCH_OVERRIDES.items() if k not in LATER_SCRATCH_FIELDS}
    assert saved_run_was_from_scratch(old)
    assert saved_run_was_from_scratch(dict(SCRATCH_OVERRIDES))
    assert saved_run_was_from_scratch({**old, "LEARNING_RATE": 0.01})   # SGD's, before AdamW
    assert not saved_run_was_from_scratch({**old, "LEARNING_RATE_WARMUP_STEPS": 0})
    assert not saved_run_was_from_scratch(dict(COCO_OVERRIDES))


def test_optimizer_from_scratch_is_adamw_and_the_option_sets_each_optimizers_rates(tmp_path):
    """From scratch the CLI trains with AdamW at its rates; --optimizer sgd brings back SGD's
    0.01 and L2 1e-4, --optimizer adamw when fine-tuning AdamW's 1e-4 (--set still wins); a
    resumed run keeps its saved optimizer and refuses a different one."""
    from types import SimpleNamespace
    from samples.nucleus.cli_common import make_config, save_run_overrides
    from samples.nucleus.cli_train import OPTIMIZER_RATES, train_overrides

    def args(**kw):
        base = dict(weights="none", logs=str(tmp_path), backbone=None, steps_per_epoch=None,
                    warmup_steps=None, lr_schedule=None, optimizer=None, set=[])
        return SimpleNamespace(**{**base, **kw})

    scratch = make_config(train_overrides(args())[0])
    assert (scratch.OPTIMIZER, scratch.LEARNING_RATE, scratch.WEIGHT_DECAY) == ("adamw", 3e-4, 0.05)
    sgd = make_config(train_overrides(args(optimizer="sgd"))[0])
    assert (sgd.OPTIMIZER, sgd.LEARNING_RATE, sgd.WEIGHT_DECAY) == ("sgd", 0.01, 1e-4)
    coco = make_config(train_overrides(args(weights="coco"))[0])
    assert (coco.OPTIMIZER, coco.LEARNING_RATE) == ("sgd", 0.001)    # Matterport's fine-tuning
    tuned = train_overrides(args(optimizer="adamw", weights="coco"))[0]
    assert tuned == {**tuned, "OPTIMIZER": "adamw", **OPTIMIZER_RATES["adamw"]["fine_tune"]}
    given = train_overrides(args(optimizer="adamw", set=["LEARNING_RATE=0.001"]))[0]
    assert given["LEARNING_RATE"] == 0.001

    run = tmp_path / "nucleus20260101T0000"
    run.mkdir()
    checkpoint = run / "mask_rcnn_nucleus_0003.weights.h5"
    checkpoint.write_bytes(b"")
    save_run_overrides(str(run), {"OPTIMIZER": "adamw", "LEARNING_RATE": 2e-4})
    resumed, path = train_overrides(args(weights=str(checkpoint)))[:2]
    assert path == str(checkpoint)
    assert resumed["OPTIMIZER"] == "adamw" and resumed["LEARNING_RATE"] == 2e-4
    kept = train_overrides(args(weights=str(checkpoint), optimizer="adamw"))[0]
    assert kept["LEARNING_RATE"] == 2e-4            # not reset to the new-run default
    # Two anchor sides per level from scratch now; a run saved before that default (no key in
    # its run_config.json) has an RPN head of 3 anchors per cell and must keep one side.
    assert scratch.RPN_ANCHOR_SCALES_PER_OCTAVE == 2 and coco.RPN_ANCHOR_SCALES_PER_OCTAVE == 1
    assert make_config(resumed).RPN_ANCHOR_SCALES_PER_OCTAVE == 1
    with pytest.raises(ValueError, match="--optimizer sgd: the run resumed from .* adamw"):
        train_overrides(args(weights=str(checkpoint), optimizer="sgd"))


def test_evaluate_stain_scale_takes_two_numbers(capsys):
    parser = nucleus_cli.build_parser()
    args = parser.parse_args(["evaluate", "--dataset", "d", "--stain-scale", "0.7,1.3"])
    assert args.stain_scale == (0.7, 1.3)
    assert parser.parse_args(["evaluate", "--dataset", "d"]).stain_scale is None
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "--dataset", "d", "--stain-scale", "0.7"])
    assert "expected two numbers H,E" in capsys.readouterr().err


def test_checkpoint_arguments_give_what_load_inference_model_reads():
    """The benchmarks' shared options (samples/nucleus/cli_eval.add_checkpoint_arguments)."""
    import argparse
    from samples.nucleus.cli_eval import add_checkpoint_arguments
    parser = argparse.ArgumentParser()
    add_checkpoint_arguments(parser, subset="train")
    args = parser.parse_args(["--logs", "runs", "--dataset", "d", "--set", "A=1", "--set", "B=2"])
    assert (args.logs, args.weights, args.dataset, args.subset) == ("runs", "last", "d", "train")
    assert args.set == ["A=1", "B=2"]
    assert args.backbone is None and args.min_confidence is None
    bare = argparse.ArgumentParser()
    add_checkpoint_arguments(bare, overrides=False)
    assert bare.parse_args(["--logs", "r", "--dataset", "d"]).subset == "val"
    with pytest.raises(SystemExit):
        bare.parse_args(["--logs", "r", "--dataset", "d", "--set", "A=1"])
    with pytest.raises(SystemExit):          # --logs and --dataset are required
        bare.parse_args(["--dataset", "d"])


def test_keep_checkpoints_option_sets_checkpoints_to_keep(tmp_path):
    """--keep-checkpoints N keeps the newest N (5 by default), never fewer than --average-last
    needs; 0 keeps every checkpoint (CHECKPOINTS_TO_KEEP None); --set still wins."""
    from types import SimpleNamespace
    from samples.nucleus.cli_train import train_overrides
    from samples.nucleus.train import build_parser

    def overrides(*argv):
        args = build_parser().parse_args(["train", "--dataset", str(tmp_path)] + list(argv))
        return train_overrides(args)[0]["CHECKPOINTS_TO_KEEP"]

    assert overrides() == 5
    assert overrides("--keep-checkpoints", "0") is None
    assert overrides("--keep-checkpoints", "2", "--average-last", "4") == 4
    assert overrides("--keep-checkpoints", "2", "--set", "CHECKPOINTS_TO_KEEP=7") == 7
    bare = SimpleNamespace(weights="none", logs=str(tmp_path), backbone=None,
                           steps_per_epoch=None, warmup_steps=None, lr_schedule=None,
                           optimizer=None, set=[])
    assert train_overrides(bare)[0]["CHECKPOINTS_TO_KEEP"] == 5
