"""Learning-rate schedules: the cosine schedule's values, its progress over epochs and over a
time budget, its resumption from a checkpoint, and the CLI's one-stage cosine plan."""

import argparse
import csv
import glob
import math
import os

import keras
import numpy as np
import pytest

from mrcnn import model as modellib
from mrcnn.schedules import (StageProgress, WarmupCosineSchedule, WarmupStepSchedule,
                             schedule_of, stage_progress)
from mrcnn.training import optimizer_state_path
from samples.nucleus import cli_train
from tests.conftest import TinyConfig


class CosineConfig(TinyConfig):
    STEPS_PER_EPOCH = 2
    LEARNING_RATE_SCHEDULE = "cosine"


def _lr(schedule, step):
    return float(np.asarray(schedule(step)))


def test_cosine_schedule_values():
    schedule = WarmupCosineSchedule(0.01, warmup_steps=10, warmup_factor=0.0, start_step=5)
    assert _lr(schedule, 0) == pytest.approx(0.005)   # global step 5: half warmed up
    assert _lr(schedule, 5) == pytest.approx(0.01)
    for progress, factor in ((0.25, 0.5 + 0.5 * math.cos(math.pi / 4)), (0.5, 0.5), (1.0, 0.0),
                             (1.3, 0.0)):
        schedule.progress.assign(progress)
        assert _lr(schedule, 100) == pytest.approx(0.01 * factor, abs=1e-9)
    step = WarmupStepSchedule(0.01, decay_steps=[10])
    assert _lr(step, 9) == pytest.approx(0.01) and _lr(step, 10) == pytest.approx(0.001)


def test_stage_progress_takes_the_further_of_steps_and_time():
    assert stage_progress(0.0, 0.25, 0.0) == pytest.approx(0.25)
    assert stage_progress(0.0, 0.25, 0.6) == pytest.approx(0.6)
    # resumed at 40 %: what remains is done at the same pace
    assert stage_progress(0.4, 0.5, 0.1) == pytest.approx(0.7)
    assert stage_progress(0.4, 2.0, 0.0) == pytest.approx(1.0)


def test_stage_progress_callback_follows_the_clock(monkeypatch):
    schedule = WarmupCosineSchedule(0.01)
    callback = StageProgress(schedule, steps=100, budget_seconds=60.0)
    clock = [1000.0]
    monkeypatch.setattr("mrcnn.schedules.time.time", lambda: clock[0])
    callback.on_train_begin()
    callback.on_train_batch_end(0)
    assert float(np.asarray(schedule.progress)) == pytest.approx(0.01)
    clock[0] += 30.0                      # half the budget after 2 of 100 steps
    callback.on_train_batch_end(1)
    assert float(np.asarray(schedule.progress)) == pytest.approx(0.5)
    assert _lr(schedule, 1000) == pytest.approx(0.005)


def test_cosine_training_decays_to_zero_and_resumes_where_it_was(tmp_path, synthetic_dataset):
    model = modellib.MaskRCNN("training", CosineConfig(), str(tmp_path))
    model.train(synthetic_dataset, None, 0.01, 2, "all", verbose=0)
    with open(os.path.join(model.log_dir, "history.csv")) as f:
        lrs = [float(row["learning_rate"]) for row in csv.DictReader(f)]
    # 4 steps over 2 epochs: progress 0.5 after the first epoch, 1.0 after the second
    assert lrs == pytest.approx([0.005, 0.0], abs=1e-7)

    with np.load(optimizer_state_path(model.find_last()), allow_pickle=False) as data:
        assert data["schedule"].tolist() == pytest.approx([0.01, 1.0])

    # A run stopped after epoch 1 of 4 resumes at progress 0.25 and decays over the rest.
    short = modellib.MaskRCNN("training", CosineConfig(), str(tmp_path / "b"))
    short.train(synthetic_dataset, None, 0.01, 4, "all", verbose=0,
                custom_callbacks=[_StopAfterOneEpoch()])
    assert short.epoch == 1
    again = modellib.MaskRCNN("training", CosineConfig(), str(tmp_path / "b"))
    again.load_weights(short.find_last())
    again.train(synthetic_dataset, None, 0.01, 4, "all", verbose=0)
    with open(os.path.join(again.log_dir, "history.csv")) as f:
        lrs = [float(row["learning_rate"]) for row in csv.DictReader(f)]
    expected = [0.005 * (1 + math.cos(math.pi * p)) for p in (0.25, 0.5, 0.75, 1.0)]
    assert lrs == pytest.approx(expected, abs=1e-7)

    # The momentum file of another stage (another learning rate) does not move the progress.
    other = modellib.MaskRCNN("training", CosineConfig(), str(tmp_path / "b"))
    other.load_weights(sorted(glob.glob(os.path.join(again.log_dir, "*_0004.weights.h5")))[0])
    other.train(synthetic_dataset, None, 0.001, 4, "all", verbose=0)  # compile + restore only
    assert float(np.asarray(schedule_of(other.keras_model.optimizer).progress)) == 0.0


class _StopAfterOneEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        self.model.stop_training = True


def _plan_args(**kw):
    args = dict(lr=None, heads_epochs=None, all_epochs=None, time_budget=None)
    args.update(kw)
    return argparse.Namespace(**args)


def test_cli_plans_one_cosine_stage_from_scratch():
    cosine = CosineConfig()
    state = cli_train.plan_stages(_plan_args(all_epochs=200), cosine, None, from_scratch=True)
    assert [(s["layers"], s["lr"], s["end_epoch"], s["share"]) for s in state["stages"]] == [
        ("all", cosine.LEARNING_RATE, 200, 1.0)]
    step = cli_train.plan_stages(_plan_args(heads_epochs=100, all_epochs=200), TinyConfig(),
                                 None, from_scratch=True)
    assert [(s["lr"], s["end_epoch"], s["share"]) for s in step["stages"]] == [
        (TinyConfig.LEARNING_RATE, 100, 0.75), (TinyConfig.LEARNING_RATE / 10, 200, 1.0)]
    # Fine-tuning keeps its heads stage; each stage then decays on its own.
    tuned = cli_train.plan_stages(_plan_args(), cosine, None, from_scratch=False)
    assert [s["layers"] for s in tuned["stages"]] == ["heads", "all"]
    with pytest.raises(ValueError, match="LEARNING_RATE_SCHEDULE"):
        type("Bad", (TinyConfig,), {"LEARNING_RATE_SCHEDULE": "linear"})().validate()


def test_a_time_budget_alone_ends_the_stages():
    """`train --time-budget 60` without end epochs is not cut at 20 + 20 epochs: the stages'
    ends are out of reach, so the budget's shares end them; given ends still count."""
    def ends(**kw):
        state = cli_train.plan_stages(_plan_args(**kw), TinyConfig(), None, from_scratch=True)
        return [(s["end_epoch"], s["share"]) for s in state["stages"]]
    assert ends() == [(20, 0.75), (40, 1.0)]
    budget_only = ends(time_budget=60)
    assert budget_only == [(cli_train.BUDGET_END_EPOCHS[0], 0.75),
                           (cli_train.BUDGET_END_EPOCHS[1], 1.0)]
    assert budget_only[0][0] > 10000
    assert ends(time_budget=60, heads_epochs=30) == [(30, 0.75),
                                                     (cli_train.BUDGET_END_EPOCHS[1], 1.0)]
    assert ends(time_budget=60, heads_epochs=30, all_epochs=50) == [(30, 0.75), (50, 1.0)]
    # A resumed run keeps its saved ends, budget or not.
    saved = cli_train.plan_stages(_plan_args(), TinyConfig(), None, from_scratch=True)
    resumed = cli_train.plan_stages(_plan_args(time_budget=60), TinyConfig(), saved, True)
    assert [s["end_epoch"] for s in resumed["stages"]] == [20, 40]


@pytest.mark.slow
def test_cli_cosine_run_decays_to_zero_by_the_time_budget(tmp_path):
    from mrcnn.data.synthetic import write_synthetic_dsb
    from samples.nucleus import train as nucleus_cli
    from tests.conftest import small_cli_sets
    data = str(tmp_path / "data")
    write_synthetic_dsb(data, 6, size=96, seed=0)
    logs = str(tmp_path / "logs")
    nucleus_cli.main(["train", "--dataset", data, "--logs", logs, "--backbone", "resnet18",
                      "--lr-schedule", "cosine", "--warmup-steps", "0", "--steps-per-epoch", "4",
                      "--all-epochs", "200", "--time-budget", "1", "--verbose", "0", "--val-subset", ""]
                     + small_cli_sets())
    run = glob.glob(os.path.join(logs, "nucleus*"))[0]
    with open(os.path.join(run, "history.csv")) as f:
        lrs = [float(row["learning_rate"]) for row in csv.DictReader(f)]
    assert len(lrs) >= 2 and lrs == sorted(lrs, reverse=True)
    assert lrs[-1] < 1e-3 * lrs[0]           # the deadline ends the cosine at 0
    import json
    state = json.load(open(os.path.join(run, "run_state.json")))
    assert [s["layers"] for s in state["stages"]] == ["all"]
    assert state["stages"][0]["ended_at"] == len(lrs)
