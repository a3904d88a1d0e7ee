"""Bad input through the command line: one-line errors naming the file, no checkpoint from
broken data, skipped files counted, resumed runs that continue the same regime."""

import csv
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import skimage.io

from mrcnn.data.synthetic import write_synthetic_dsb
from samples.nucleus import train as nucleus_cli
from tests.conftest import small_cli_sets

TRAIN_PY = os.path.join(os.path.dirname(__file__), "..", "samples", "nucleus", "train.py")


@pytest.fixture(scope="module")
def clean_data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("bad_input_data"))
    write_synthetic_dsb(root, 6, size=96, seed=0)
    return root


@pytest.fixture
def data(clean_data, tmp_path):
    """A private copy of the synthetic DSB folder that the test may break."""
    root = str(tmp_path / "data")
    shutil.copytree(clean_data, root)
    return root


def _image_dirs(root):
    return sorted(glob.glob(os.path.join(root, "stage1_train", "*")))


def _train(data, logs, *extra):
    return ["train", "--dataset", data, "--logs", logs, "--backbone", "tiny_test",
            "--steps-per-epoch", "2", "--heads-epochs", "1", "--all-epochs", "1",
            "--val-subset", "", "--verbose", "0", *extra] + small_cli_sets()


def _fails(capsys, argv, *expected):
    """Run the CLI, expect exit status 2 and one ``error:`` line containing ``expected``."""
    with pytest.raises(SystemExit) as exit_info:
        nucleus_cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def _checkpoints(logs):
    return glob.glob(os.path.join(logs, "*", "*.weights.h5"))


def test_missing_masks_folder_is_an_error_or_a_logged_skip(data, tmp_path, capsys):
    broken = _image_dirs(data)[2]
    shutil.rmtree(os.path.join(broken, "masks"))
    logs = str(tmp_path / "logs")
    _fails(capsys, _train(data, logs, "--subset", "stage1_train"), broken, "no masks",
           "--skip-unlabelled")
    assert not _checkpoints(logs)
    # evaluation refuses it too; detection does not need masks
    _fails(capsys, ["evaluate", "--dataset", data, "--subset", "stage1_train", "--model",
                    "otsu"], broken)
    nucleus_cli.main(["detect", "--dataset", data, "--subset", "stage1_train", "--model", "otsu",
                      "--out", str(tmp_path / "det")])
    # asked for explicitly, the image is left out, logged and counted at the end
    nucleus_cli.main(_train(data, logs, "--subset", "stage1_train", "--skip-unlabelled"))
    out = capsys.readouterr().out
    assert "Skipped 1 image(s) without masks" in out and os.path.basename(broken) in out
    assert len(_checkpoints(logs)) == 1


def test_mask_of_another_size_is_named_with_both_sizes(data, tmp_path, caplog, capsys):
    broken = _image_dirs(data)[1]
    mask_file = sorted(glob.glob(os.path.join(broken, "masks", "*.png")))[0]
    skimage.io.imsave(mask_file, np.full((40, 50), 255, np.uint8), check_contrast=False)
    logs = str(tmp_path / "logs")
    argv = _train(data, logs, "--subset", "stage1_train")
    argv[argv.index("--steps-per-epoch") + 1] = "6"     # one pass over the 6 images
    nucleus_cli.main(argv)
    expected = f"mask {mask_file} is 40x50 pixels but its image"
    assert any(expected in r.getMessage() and "is 96x96" in r.getMessage()
               for r in caplog.records)
    assert "1 unreadable image(s)" in capsys.readouterr().out
    _fails(capsys, ["evaluate", "--dataset", data, "--subset", "stage1_train", "--model",
                    "otsu"], expected)


def test_command_line_errors_are_one_line(data, tmp_path, capsys):
    logs = str(tmp_path / "logs")
    _fails(capsys, _train(str(tmp_path / "nowhere"), logs), "dataset folder not found",
           "nowhere")
    os.makedirs(os.path.join(data, "empty_subset"))
    _fails(capsys, ["evaluate", "--dataset", data, "--subset", "empty_subset", "--model",
                    "otsu"], "no images in", "empty_subset")
    _fails(capsys, _train(data, logs, "--backbone", "resnet5O"), "unknown backbone 'resnet5O'",
           "mobilenet_v2")
    _fails(capsys, _train(data, logs, "--set", "NO_SUCH_FIELD=1"), "NO_SUCH_FIELD",
           "no such config field")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file")
    _fails(capsys, _train(data, logs, "--weights", str(junk)), str(junk), "not an HDF5")
    corrupt = os.path.join(_image_dirs(data)[0], "images",
                           os.path.basename(_image_dirs(data)[0]) + ".png")
    with open(corrupt, "wb") as f:
        f.write(b"\x89PNG broken")
    _fails(capsys, ["evaluate", "--dataset", data, "--subset", "stage1_train", "--model",
                    "otsu"], corrupt, "cannot read image")
    assert not _checkpoints(logs)


def test_diverging_training_stops_without_saving_it(data, tmp_path, capsys):
    logs = str(tmp_path / "logs")
    argv = _train(data, logs, "--subset", "stage1_train", "--lr", "1e6", "--warmup-steps", "0")
    argv[argv.index("--steps-per-epoch") + 1] = "6"
    argv[argv.index("--heads-epochs") + 1] = "3"
    argv[argv.index("--all-epochs") + 1] = "3"
    line = _fails(capsys, argv, "training diverged", "at epoch ", ", step ")
    epoch = int(line.split("at epoch ")[1].split(",")[0])
    # every checkpoint left is from an epoch before the one that diverged
    saved = sorted(int(p[-15:-11]) for p in _checkpoints(logs))
    assert saved == list(range(1, epoch))


def test_unet_skips_a_corrupt_image_and_counts_it(data, tmp_path, capsys):
    corrupt = os.path.join(_image_dirs(data)[3], "images",
                           os.path.basename(_image_dirs(data)[3]) + ".png")
    with open(corrupt, "wb") as f:
        f.write(b"broken")
    logs = str(tmp_path / "logs")
    nucleus_cli.main(["train", "--model", "unet", "--dataset", data, "--subset", "stage1_train",
                      "--val-subset", "", "--logs", logs, "--steps-per-epoch", "3",
                      "--all-epochs", "1", "--verbose", "0"])
    out = capsys.readouterr().out
    assert "1 unreadable image(s)" in out and corrupt in out
    assert glob.glob(os.path.join(logs, "unet*", "unet.keras"))


def _history(run_dir):
    with open(os.path.join(run_dir, "history.csv")) as f:
        return {int(r["epoch"]): r for r in csv.DictReader(f)}


@pytest.mark.slow
def test_resumed_from_scratch_run_continues_the_same_regime(data, tmp_path):
    """Killed with SIGKILL after its first checkpoint and resumed with --weights last, a
    from-scratch run trains the same layers at the same learning rates as an uninterrupted
    one (no heads-only stage, no second warm-up), and ends its stages at the same epochs."""
    argv = ["--dataset", data, "--subset", "stage1_train", "--backbone", "tiny_test",
            "--steps-per-epoch", "5", "--warmup-steps", "4", "--heads-epochs", "2",
            "--all-epochs", "4", "--val-subset", "", "--verbose", "0"] + small_cli_sets()
    whole = str(tmp_path / "whole")
    nucleus_cli.main(["train", "--logs", whole] + argv)

    killed = str(tmp_path / "killed")
    # tiny_test is registered by the test suite's conftest; the child process registers it too
    child = ("import sys; import tests.conftest; from samples.nucleus import train; "
             "train.main(sys.argv[1:])")
    proc = subprocess.Popen([sys.executable, "-c", child, "train", "--logs", killed] + argv,
                            cwd=os.path.join(os.path.dirname(__file__), ".."),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not glob.glob(os.path.join(killed, "*", "*_0001.optimizer.npz")):
        assert proc.poll() is None and time.time() < deadline, "no first checkpoint"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(_checkpoints(killed))
    assert done and not any(p.endswith("_0004.weights.h5") for p in done)
    nucleus_cli.main(["train", "--logs", killed, "--weights", "last"] + argv)

    (whole_run,), (killed_run,) = (glob.glob(os.path.join(d, "nucleus*")) for d in (whole, killed))
    a, b = _history(whole_run), _history(killed_run)
    assert sorted(a) == sorted(b) == [0, 1, 2, 3]
    for epoch in a:
        assert float(a[epoch]["learning_rate"]) == pytest.approx(float(b[epoch]["learning_rate"]))
        assert a[epoch]["trainable_weights"] == b[epoch]["trainable_weights"]
    state_a, state_b = (json.load(open(os.path.join(r, "run_state.json")))
                        for r in (whole_run, killed_run))
    assert state_a == state_b
    assert state_b["from_scratch"] and state_b["stages"][0]["layers"] == "all"
    assert [s["ended_at"] for s in state_b["stages"]] == [2, 4]
