"""TensorBoard detection metrics: the callback logs DSB score, AP50 and overlay images."""

import glob
import os

import numpy as np
import tensorflow as tf

from mrcnn import model as modellib
from mrcnn.config import inference_config
from mrcnn.monitoring import copy_weights_by_name
from tests.conftest import TinyConfig


class EvalConfig(TinyConfig):
    EVAL_EVERY_N_EPOCHS = 1
    EVAL_IMAGES = 2
    STEPS_PER_EPOCH = 1


def _tags(folder):
    tags = set()
    for event_file in glob.glob(os.path.join(folder, "**", "events.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(event_file):
            tags.update(v.tag for v in event.summary.value)
    return tags


def test_detection_metrics_reach_tensorboard(tmp_path, synthetic_dataset):
    model = modellib.MaskRCNN("training", EvalConfig(), str(tmp_path))
    history = model.train(synthetic_dataset, synthetic_dataset, 1e-3, 1, "all", verbose=0)
    assert 0.0 <= history.history["val_dsb_score"][0] <= 1.0
    detection_tags = _tags(os.path.join(model.log_dir, "detections"))
    for tag in ("detections/dsb_score", "detections/ap50", "detections/iou", "detections/dice",
                "detections/overlays/0"):
        assert tag in detection_tags, sorted(detection_tags)
    all_tags = _tags(model.log_dir)
    assert "epoch_val_dsb_score" in all_tags or "epoch_dsb_score" in all_tags


def test_copy_weights_by_name_makes_models_agree(tmp_path):
    train = modellib.MaskRCNN("training", TinyConfig(), str(tmp_path))
    infer = modellib.MaskRCNN("inference", inference_config(TinyConfig()), str(tmp_path))
    assert copy_weights_by_name(train.keras_model, infer.keras_model) > 10
    for name in ("tiny3_conv", "fpn_p3", "mrcnn_mask"):
        for a, b in zip(train.keras_model.get_layer(name).get_weights(),
                        infer.keras_model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
