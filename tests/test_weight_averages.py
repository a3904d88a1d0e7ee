"""benchmarks/ema_within_run.py: exponential moving averages of the weights kept during
training, checked against averages computed by hand, and the script end to end through the
``train`` command (each stage's raw and averaged weights written, the run's config beside)."""

import glob
import json
import os

import keras
import numpy as np
import pytest

from mrcnn.data.synthetic import write_synthetic_dsb
from mrcnn.weights import read_weights_by_name
from tests.conftest import load_benchmark, small_cli_sets


class WeightsAfterEachBatch(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_begin(self, logs=None):
        if not self.seen:
            self.seen.append(self.model.get_weights())

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append(self.model.get_weights())


def test_weight_shadows_follow_the_hand_computed_average_across_fits(tmp_path):
    shadows_lib = load_benchmark("ema_within_run")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="dense")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x, y = np.random.rand(8, 2).astype("float32"), np.random.rand(8, 1).astype("float32")
    shadows = shadows_lib.WeightShadows([0.5], str(tmp_path), every=2)
    seen = WeightsAfterEachBatch()
    model.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0, callbacks=[seen, shadows])
    model.fit(x[:4], y[:4], batch_size=2, epochs=1, shuffle=False, verbose=0,
              callbacks=[seen, shadows])
    weights = seen.seen                          # before any step, then after steps 1..6
    assert len(weights) == 7

    # updates after steps 2, 4 and 6; decay 0.5 ** 2 = 0.25, lowered at first to
    # (1 + n) / (3 + n) = 0.5, 0.6, 0.667 (so 0.25 throughout here)
    expected = weights[0]
    for step in (2, 4, 6):
        expected = [0.25 * e + 0.75 * w for e, w in zip(expected, weights[step])]
    averaged = shadows.averages()[0.5]
    for got, want in zip(averaged, expected):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert not np.allclose(averaged[0], weights[6][0])

    # each fit's end wrote the raw weights and the average, and left the raw ones in place
    assert sorted(os.path.basename(p) for p in shadows.written) == [
        "ema0.5_stage1.weights.h5", "ema0.5_stage2.weights.h5",
        "raw_stage1.weights.h5", "raw_stage2.weights.h5"]
    for got, want in zip(model.get_weights(), weights[6]):
        np.testing.assert_array_equal(got, want)
    stage2 = read_weights_by_name(str(tmp_path / "ema0.5_stage2.weights.h5"))["dense"]
    for got, want in zip(stage2, expected):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    raw1 = read_weights_by_name(str(tmp_path / "raw_stage1.weights.h5"))["dense"]
    np.testing.assert_array_equal(raw1[0], weights[4][0])


@pytest.mark.slow
def test_ema_script_writes_each_stage_for_evaluate(tmp_path, monkeypatch):
    data = str(tmp_path / "data")
    write_synthetic_dsb(data, 6, size=96, seed=0)
    logs = str(tmp_path / "logs")
    monkeypatch.setattr("sys.argv", [
        "ema_within_run.py", "--decays", "0.9,0.99", "--every", "1", "--",
        "--dataset", data, "--logs", logs, "--backbone", "resnet18", "--steps-per-epoch", "2",
        "--heads-epochs", "1", "--all-epochs", "2", "--verbose", "0"] + small_cli_sets())
    load_benchmark("ema_within_run").main()
    written = sorted(os.path.basename(p) for p in glob.glob(os.path.join(logs, "ema", "*")))
    assert written == ["ema0.99_stage1.weights.h5", "ema0.99_stage2.weights.h5",
                       "ema0.9_stage1.weights.h5", "ema0.9_stage2.weights.h5",
                       "raw_stage1.weights.h5", "raw_stage2.weights.h5", "run_config.json"]
    saved = json.load(open(os.path.join(logs, "ema", "run_config.json")))["overrides"]
    assert saved["BACKBONE"] == "resnet18"
    # the raw weights of the last stage are the run's last checkpoint; the averages differ
    last = read_weights_by_name(glob.glob(os.path.join(logs, "nucleus*",
                                                       "mask_rcnn_nucleus_0002.weights.h5"))[0])
    raw = read_weights_by_name(os.path.join(logs, "ema", "raw_stage2.weights.h5"))
    averaged = read_weights_by_name(os.path.join(logs, "ema", "ema0.9_stage2.weights.h5"))
    np.testing.assert_array_equal(raw["mrcnn_mask"][0], last["mrcnn_mask"][0])
    assert not np.allclose(averaged["mrcnn_mask"][0], last["mrcnn_mask"][0])
