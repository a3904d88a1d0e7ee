"""MASK_HEAD_NORM="group": GroupNormalization of each ROI by itself in the mask head."""

import math

import keras
import numpy as np
import pytest

from mrcnn import model as modellib
from mrcnn.modeling.heads import build_mask_head
from mrcnn.training import set_trainable, HEADS_REGEX
from tests.conftest import TinyConfig, ZeroConfidenceConfig, assert_detects_and_round_trips


class GroupNormHeadConfig(TinyConfig):
    MASK_HEAD_NORM = "group"


class GroupNormHeadInferenceConfig(ZeroConfidenceConfig):
    MASK_HEAD_NORM = "group"


def test_config_rejects_unknown_norm():
    config = TinyConfig()
    config.MASK_HEAD_NORM = "batch"
    with pytest.raises(ValueError, match="MASK_HEAD_NORM"):
        config.validate()


def test_each_roi_is_normalised_by_itself():
    """A ROI's mask does not depend on which other ROIs share the batch (unlike batch
    statistics), and the head differs from the BatchNorm one."""
    keras.utils.set_random_seed(0)
    pooled = keras.Input((14, 14, 8))
    head = keras.Model(pooled, build_mask_head(pooled, 2, channels=16, norm="group"))
    names = [layer.name for layer in head.layers]
    assert [n for n in names if n.startswith("mrcnn_mask_gn")] == [
        f"mrcnn_mask_gn{i}" for i in range(1, 5)]
    assert not any(n.startswith("mrcnn_mask_bn") for n in names)
    rois = np.random.RandomState(0).normal(size=(5, 14, 14, 8)).astype(np.float32)
    together = head(rois, training=True).numpy()
    alone = np.concatenate([head(rois[i:i + 1], training=True).numpy() for i in range(5)])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    # Scaling one ROI's features changes nothing after the first normalisation but the bias
    # term of the first convolution (zero at initialisation): the mask stays the same.
    np.testing.assert_allclose(head(rois[:1] * 7.0).numpy(), alone[:1], atol=1e-4)


def test_group_norm_mask_head_trains_and_its_norms_are_trainable(tmp_path, synthetic_dataset):
    model = modellib.MaskRCNN("training", GroupNormHeadConfig(), str(tmp_path))
    km = model.keras_model
    trainable = set_trainable(km, HEADS_REGEX, train_bn=False)
    assert {f"mrcnn_mask_gn{i}" for i in range(1, 5)} <= set(trainable)
    before = km.get_layer("mrcnn_mask_gn1").get_weights()[0].copy()
    history = model.train(synthetic_dataset, None, 1e-3, 1, "heads", verbose=0)
    assert math.isfinite(history.history["mrcnn_mask_loss"][0])
    assert not np.array_equal(km.get_layer("mrcnn_mask_gn1").get_weights()[0], before)  # trained


def test_group_norm_head_detects_and_round_trips_in_safe_mode(tmp_path):
    assert_detects_and_round_trips(GroupNormHeadInferenceConfig(), tmp_path)
