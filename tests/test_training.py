"""Training behaviour: staged layers, loss bookkeeping across train() calls, empty ground
truth, checkpoints and TensorBoard logs."""

import glob
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from mrcnn import model as modellib
from mrcnn.data.synthetic import SyntheticNucleiDataset
from mrcnn.losses import LOSS_NAMES
from mrcnn.training import optimizer_state_path
from tests.conftest import TinyConfig


class WeightedConfig(TinyConfig):
    LOSS_WEIGHTS = {"rpn_class_loss": 1.0, "rpn_bbox_loss": 0.5, "mrcnn_class_loss": 2.0,
                    "mrcnn_bbox_loss": 1.0, "mrcnn_mask_loss": 3.0}
    STEPS_PER_EPOCH = 1


def _weights(model, name):
    return [w.copy() for w in model.keras_model.get_layer(name).get_weights()]


def _check_total(history):
    weights = WeightedConfig.LOSS_WEIGHTS
    for prefix in ("", "val_"):
        for i in range(len(history["loss"])):
            parts = sum(weights[k] * history[prefix + k][i] for k in LOSS_NAMES)
            total = parts + history[prefix + "weight_decay_loss"][i]
            assert history[prefix + "loss"][i] == pytest.approx(total, rel=1e-4, abs=1e-5)
            assert all(math.isfinite(history[prefix + k][i]) for k in LOSS_NAMES)


def test_staged_training_losses_checkpoints_and_logs(tmp_path, synthetic_dataset, caplog):
    model = modellib.MaskRCNN("training", WeightedConfig(), str(tmp_path))
    backbone_before = _weights(model, "tiny3_conv") + _weights(model, "tiny3_bn")
    head_before = _weights(model, "mrcnn_class_logits") + _weights(model, "rpn_conv_shared")

    first = model.train(synthetic_dataset, synthetic_dataset, 1e-2, 1, "heads", verbose=0)
    assert model.epoch == 1
    # TinyConfig trains the backbone's BatchNorm on 2-image batches: the user was warned
    assert "BatchNorm on batches of 2 image(s)" in caplog.text
    for a, b in zip(backbone_before, _weights(model, "tiny3_conv") + _weights(model, "tiny3_bn")):
        np.testing.assert_array_equal(a, b)
    assert any(not np.allclose(a, b) for a, b in zip(
        head_before, _weights(model, "mrcnn_class_logits") + _weights(model, "rpn_conv_shared")))
    _check_total(first.history)

    second = model.train(synthetic_dataset, synthetic_dataset, 1e-2, 2, "all", verbose=0)
    assert caplog.text.count("BatchNorm on batches of 2 image(s)") == 1   # once, not per stage
    assert second.epoch == [1] and model.epoch == 2
    _check_total(second.history)
    assert any(not np.allclose(a, b) for a, b in zip(backbone_before,
                                                     _weights(model, "tiny3_conv")))

    checkpoints = sorted(glob.glob(os.path.join(model.log_dir, "*.weights.h5")))
    assert [os.path.basename(p) for p in checkpoints] == [
        "mask_rcnn_tiny_0001.weights.h5", "mask_rcnn_tiny_0002.weights.h5"]
    assert model.find_last() == checkpoints[-1]

    tags = set()
    for event_file in glob.glob(os.path.join(model.log_dir, "**", "events.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(event_file):
            tags.update(v.tag for v in event.summary.value)
    for name in LOSS_NAMES + ("loss", "learning_rate"):
        assert f"epoch_{name}" in tags, (name, sorted(tags))


def test_resume_continues_epoch_count_and_momentum(tmp_path, synthetic_dataset):
    model = modellib.MaskRCNN("training", WeightedConfig(), str(tmp_path))
    model.train(synthetic_dataset, None, 1e-3, 1, "all", verbose=0)
    checkpoint = model.find_last()
    state = optimizer_state_path(checkpoint)
    assert state.endswith("mask_rcnn_tiny_0001.optimizer.npz") and os.path.exists(state)
    with np.load(state, allow_pickle=False) as data:
        saved = [data[k] for k in sorted(k for k in data.files if k.startswith("v"))]
    momentum = [v for v in saved if v.ndim > 0]
    assert any(np.abs(v).max() > 0 for v in momentum)

    resumed = modellib.MaskRCNN("training", WeightedConfig(), str(tmp_path))
    resumed.load_weights(checkpoint)
    assert resumed.epoch == 1 and resumed.log_dir == model.log_dir
    # Training "until epoch 1" runs no step: it only compiles and restores the momentum.
    assert resumed.train(synthetic_dataset, None, 1e-3, 1, "all", verbose=0).epoch == []
    restored = [np.asarray(v) for v in resumed.keras_model.optimizer.variables if v.ndim > 0]
    assert len(restored) == len(momentum)
    for a, b in zip(restored, momentum):
        np.testing.assert_array_equal(a, b)

    history = resumed.train(synthetic_dataset, None, 1e-3, 2, "all", verbose=0)
    assert history.epoch == [1]
    assert os.path.exists(os.path.join(model.log_dir, "mask_rcnn_tiny_0002.weights.h5"))
    # Only the newest optimizer state is kept; the weights of every epoch stay.
    assert os.path.exists(optimizer_state_path(resumed.find_last()))
    assert not os.path.exists(state)


def test_optimizer_state_for_other_layers_is_ignored(tmp_path, synthetic_dataset):
    model = modellib.MaskRCNN("training", WeightedConfig(), str(tmp_path))
    model.train(synthetic_dataset, None, 1e-3, 1, "heads", verbose=0)
    resumed = modellib.MaskRCNN("training", WeightedConfig(), str(tmp_path))
    resumed.load_weights(model.find_last())
    assert os.path.exists(optimizer_state_path(model.find_last()))
    resumed.train(synthetic_dataset, None, 1e-3, 1, "all", verbose=0)  # no step: compile only
    assert not resumed.keras_model.optimizer.built  # state of "heads" not forced onto "all"


def test_empty_ground_truth_trains(tmp_path):
    dataset = SyntheticNucleiDataset().load_synthetic(4, size=128, seed=0, num_nuclei=0)
    dataset.prepare()
    assert dataset.load_mask(0)[0].shape[-1] == 0
    model = modellib.MaskRCNN("training", WeightedConfig(), str(tmp_path))
    history = model.train(dataset, None, 1e-2, 1, "all", verbose=0).history
    assert history["rpn_bbox_loss"][0] == 0 and history["mrcnn_bbox_loss"][0] == 0
    assert history["mrcnn_mask_loss"][0] == 0
    assert history["rpn_class_loss"][0] > 0 and history["mrcnn_class_loss"][0] > 0
    assert math.isfinite(history["loss"][0])


def test_unknown_layers_selection_raises(tmp_path, synthetic_dataset):
    model = modellib.MaskRCNN("training", WeightedConfig(), str(tmp_path))
    with pytest.raises(ValueError, match="selects no layer"):
        model.train(synthetic_dataset, None, 1e-3, 1, "nothing_matches_this", verbose=0)


def test_average_last_checkpoints_of_the_last_stage(tmp_path):
    """The newest N epoch checkpoints after ``after_epoch`` are averaged into the newest
    one's ``_average`` file; resuming still finds the epoch checkpoint, the final weights
    are the average."""
    import keras
    from mrcnn import training
    from mrcnn.weights import read_weights_by_name, save_weights_by_name
    run = tmp_path / "nucleus20260101T0000"
    inp = keras.Input((3,))
    model = keras.Model(inp, keras.layers.Dense(2, name="dense")(inp))
    for epoch in range(1, 6):          # epoch e holds kernel = e, bias = e
        model.get_layer("dense").set_weights([np.full((3, 2), epoch, np.float32),
                                              np.full((2,), epoch, np.float32)])
        save_weights_by_name(model, run / f"mask_rcnn_nucleus_{epoch:04d}.weights.h5")
    path, epochs = training.average_last_checkpoints(str(run), "NUCLEUS", 3, after_epoch=3)
    assert epochs == [4, 5]            # only the epochs after 3, at most 3 of them
    assert path == str(run / "mask_rcnn_nucleus_0005_average.weights.h5")
    kernel, bias = read_weights_by_name(path)["dense"]
    np.testing.assert_allclose(kernel, 4.5)
    np.testing.assert_allclose(bias, 4.5)
    path, epochs = training.average_last_checkpoints(str(run), "nucleus", 3)
    assert epochs == [3, 4, 5]
    np.testing.assert_allclose(read_weights_by_name(path)["dense"][0], 4.0)
    assert training.find_last_checkpoint(str(tmp_path), "nucleus").endswith("_0005.weights.h5")
    assert training.find_final_weights(str(tmp_path), "nucleus") == path
    # a single qualifying checkpoint is not averaged; a newer epoch supersedes the average
    assert training.average_last_checkpoints(str(run), "nucleus", 3, after_epoch=4) == \
        (None, [5])
    save_weights_by_name(model, run / "mask_rcnn_nucleus_0006.weights.h5")
    assert training.find_final_weights(str(tmp_path), "nucleus").endswith("_0006.weights.h5")


def test_mask_train_rois_cap_limits_the_mask_head_batch(tmp_path, synthetic_dataset):
    """MASK_TRAIN_ROIS_PER_IMAGE: the mask head sees at most that many positive ROIs per
    image, and their targets are the matching rows; training still runs."""
    from mrcnn.data.generator import DataGenerator

    class CappedConfig(WeightedConfig):
        MASK_TRAIN_ROIS_PER_IMAGE = 2

    results = {}
    for config in (WeightedConfig(), CappedConfig()):
        model = modellib.MaskRCNN("training", config, str(tmp_path))
        (batch,) = DataGenerator(synthetic_dataset, config, steps=1, seed=0)[0]
        out = model.keras_model(batch, training=False)
        positives = int(np.sum(np.asarray(out["target_class_ids"]) > 0))
        results[type(config).__name__] = (out["mrcnn_mask"].shape[0], positives,
                                          out["mask_targets"].shape[0])
    full, capped = results["WeightedConfig"], results["CappedConfig"]
    assert full[0] == full[1] > 2 * config.IMAGES_PER_GPU     # every positive ROI
    assert capped[0] == capped[2] == 2 * config.IMAGES_PER_GPU  # two per image
    history = model.train(synthetic_dataset, None, 1e-2, 1, "all", verbose=0)
    assert math.isfinite(history.history["mrcnn_mask_loss"][0])


def test_two_anchor_scales_per_octave_train_and_detect(tmp_path, synthetic_dataset):
    """RPN_ANCHOR_SCALES_PER_OCTAVE=2: twice the anchors, one RPN output per anchor (the
    generator's targets line up with the head), and the model trains and detects."""
    from mrcnn.data.generator import DataGenerator

    class OctaveConfig(WeightedConfig):
        RPN_ANCHOR_SCALES_PER_OCTAVE = 2

    counts = {}
    for config in (WeightedConfig(), OctaveConfig()):
        model = modellib.MaskRCNN("training", config, str(tmp_path / type(config).__name__))
        (batch,) = DataGenerator(synthetic_dataset, config, steps=1, seed=0)[0]
        out = model.keras_model(batch, training=False)
        counts[type(config).__name__] = (batch["input_rpn_match"].shape[1],
                                         out["rpn_class_logits"].shape[1],
                                         out["rpn_bbox"].shape[1])
    one, two = counts["WeightedConfig"], counts["OctaveConfig"]
    assert one[0] == one[1] == one[2]
    assert two == (2 * one[0],) * 3
    history = model.train(synthetic_dataset, None, 1e-3, 1, "all", seed=0, verbose=0)
    assert math.isfinite(history.history["rpn_class_loss"][0])

    class OctaveInference(OctaveConfig):
        IMAGES_PER_GPU = 1
        DETECTION_MIN_CONFIDENCE = 0.0

    inference = modellib.MaskRCNN("inference", OctaveInference(), str(tmp_path / "OctaveConfig"))
    inference.load_weights(inference.find_last())
    image = synthetic_dataset.load_image(synthetic_dataset.image_ids[0])
    graph = inference.run_graph(image)
    assert graph["anchors"].shape[0] == graph["rpn_class"].shape[0] == graph["rpn_bbox"].shape[0]
    assert graph["image"].shape[:2] == (128, 128) and graph["anchors"].shape[0] == two[0]
    assert np.any(np.asarray(graph["rpn_rois"]) != 0)      # proposals from the octave anchors
    # Whether a 1-epoch model's heads already score a nucleus above background varies with
    # the CPU's arithmetic, so only detect's contract is asserted here.
    result = inference.detect([image])[0]
    assert result["masks"].shape[:2] == image.shape[:2]
    assert len(result["scores"]) == len(result["rois"]) == result["masks"].shape[-1]


def test_per_instance_positive_sampling_reaches_the_targets_and_trains(tmp_path,
                                                                        synthetic_dataset):
    """ROI_POSITIVE_SAMPLING="per_instance" is built into the detection targets and trains."""

    class PerInstanceConfig(WeightedConfig):
        ROI_POSITIVE_SAMPLING = "per_instance"

    model = modellib.MaskRCNN("training", PerInstanceConfig(), str(tmp_path))
    assert model.keras_model.get_layer("proposal_targets").positive_sampling == "per_instance"
    history = model.train(synthetic_dataset, None, 1e-2, 1, "all", verbose=0)
    assert all(math.isfinite(history.history[k][0]) for k in LOSS_NAMES)


def test_validation_every_n_epochs_skips_the_others(tmp_path, synthetic_dataset):
    """VALIDATION_EVERY_N_EPOCHS=2: validation losses at epochs 1 (the call's first), 2 and 4
    (even, and the last), not at 3; history.csv has them where computed."""
    from mrcnn.training import validation_epochs

    assert validation_epochs(0, 4, 2) == [1, 2, 4]
    assert validation_epochs(4, 9, 5) == [5, 9]
    assert validation_epochs(0, 3, 1) == [1, 2, 3]

    class SparseValidationConfig(WeightedConfig):
        VALIDATION_EVERY_N_EPOCHS = 2

    model = modellib.MaskRCNN("training", SparseValidationConfig(), str(tmp_path))
    history = model.train(synthetic_dataset, synthetic_dataset, 1e-3, 4, "all", verbose=0)
    assert len(history.history["loss"]) == 4 and len(history.history["val_loss"]) == 3
    rows = open(os.path.join(model.log_dir, "history.csv")).read().splitlines()
    val_column = rows[0].split(",").index("val_loss")
    assert [row.split(",")[val_column] == "NA" for row in rows[1:]] == [False, False, True, False]


def test_prune_checkpoints_keeps_the_newest_of_its_own_run_only(tmp_path):
    """Newest epoch 6 with keep=2: epochs 1-4 of the same name go; epoch 5 and 6, a later
    epoch 9 (a resumed run's own), the average, the optimizer state and another model's
    checkpoint stay."""
    from mrcnn.training import prune_checkpoints
    names = [f"mask_rcnn_tiny_{e:04d}.weights.h5" for e in (1, 2, 3, 4, 5, 6, 9)] + [
        "mask_rcnn_tiny_0003_average.weights.h5", "mask_rcnn_tiny_0006.optimizer.npz",
        "mask_rcnn_other_0001.weights.h5", "history.csv"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    removed = prune_checkpoints(str(tmp_path / "mask_rcnn_tiny_0006.weights.h5"), 2)
    assert sorted(os.path.basename(p) for p in removed) == [
        f"mask_rcnn_tiny_{e:04d}.weights.h5" for e in (1, 2, 3, 4)]
    assert sorted(os.listdir(tmp_path)) == sorted(
        n for n in names if n not in {os.path.basename(p) for p in removed})
    assert prune_checkpoints(str(tmp_path / "mask_rcnn_tiny_0006.weights.h5"), 2) == []


def test_checkpoints_to_keep_during_training(tmp_path, synthetic_dataset):
    """CHECKPOINTS_TO_KEEP=1 over three epochs leaves only the third epoch's checkpoint, which
    find_last returns and a new model resumes from at epoch 3; a value below 1 is refused."""
    config = TinyConfig()
    config.CHECKPOINTS_TO_KEEP = 1
    model = modellib.MaskRCNN("training", config, str(tmp_path))
    model.train(synthetic_dataset, None, 1e-2, 3, "heads", verbose=0)
    kept = sorted(os.path.basename(p)
                  for p in glob.glob(os.path.join(model.log_dir, "*.weights.h5")))
    assert kept == ["mask_rcnn_tiny_0003.weights.h5"]
    assert os.path.exists(optimizer_state_path(model.find_last()))
    resumed = modellib.MaskRCNN("training", config, str(tmp_path))
    resumed.load_weights(resumed.find_last())
    assert resumed.epoch == 3
    config.CHECKPOINTS_TO_KEEP = 0
    with pytest.raises(ValueError, match="CHECKPOINTS_TO_KEEP"):
        config.validate()
