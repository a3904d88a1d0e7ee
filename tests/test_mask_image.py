"""MASK_IMAGE_CHANNELS: the mask head also sees the input image sampled on each ROI's mask grid."""

import math

import numpy as np
import pytest

from mrcnn import model as modellib
from mrcnn.layers import DetectionTargetLayer, ImageROICrop
from tests.conftest import TinyConfig, ZeroConfidenceConfig, assert_detects_and_round_trips


class ImageGuidedConfig(TinyConfig):
    MASK_IMAGE_CHANNELS = 8


class ImageGuidedInferenceConfig(ZeroConfidenceConfig):
    MASK_IMAGE_CHANNELS = 8


def test_crop_samples_from_the_first_to_the_last_pixel_of_the_box():
    """A box normalised as (y1 / (H-1), x1 / (W-1), (y2-1) / (H-1), (x2-1) / (W-1)) sampled at
    its pixel count gives exactly its pixels, times the scale."""
    rows, cols = np.mgrid[0:8, 0:8]
    image = (10.0 * rows + cols).astype(np.float32)[None, ..., None]   # [1, 8, 8, 1]
    box = np.array([[2 / 7, 1 / 7, 5 / 7, 4 / 7]], np.float32)         # rows 2-5, cols 1-4
    out = ImageROICrop((4, 4), scale=0.5)([box, np.zeros(1, np.int32), image]).numpy()
    assert out.shape == (1, 4, 4, 1)
    np.testing.assert_allclose(out[0, ..., 0], 0.5 * image[0, 2:6, 1:5, 0], atol=1e-4)
    default = ImageROICrop((4, 4))([box, np.zeros(1, np.int32), image]).numpy()
    np.testing.assert_allclose(default, out / 64.0, atol=1e-6)          # 1/128 by default


def test_crops_of_an_image_equal_to_the_masks_are_the_mask_targets():
    """The crops share the mask targets' frame: where the image is the object's mask, the crop
    at each positive ROI is that ROI's target (before the targets are rounded)."""
    rng = np.random.RandomState(0)
    size = 32
    mask = np.zeros((size, size), bool)
    mask[6:20, 9:25] = True
    mask[10:14, 9:13] = False                                          # not a plain box
    gt_box = np.array([[[6 / 31, 9 / 31, 19 / 31, 24 / 31]]], np.float32)
    jitter = rng.uniform(-0.04, 0.04, (1, 5, 4)).astype(np.float32)
    proposals = np.clip(gt_box + jitter, 0, 1)
    layer = DetectionTargetLayer(5, 1.0, [0.1, 0.1, 0.2, 0.2], (14, 14), use_mini_mask=False,
                                 include_gt=False)
    rois, class_ids, _, targets = (t.numpy() for t in layer(
        [proposals, np.array([[1]], np.int32), gt_box, mask[None, ..., None]]))
    positive = rois[0][class_ids[0] > 0]
    assert len(positive) >= 3
    crops = ImageROICrop((14, 14), scale=1.0)(
        [positive, np.zeros(len(positive), np.int32),
         mask[None, ..., None].astype(np.float32)]).numpy()[..., 0]
    np.testing.assert_array_equal(np.round(crops), targets[0, :len(positive)])
    assert 0 < targets[0, :len(positive)].mean() < 1


@pytest.mark.parametrize("value", [-1, 2.5])
def test_config_rejects_a_bad_channel_count(value):
    config = TinyConfig()
    config.MASK_IMAGE_CHANNELS = value
    with pytest.raises(ValueError, match="MASK_IMAGE_CHANNELS"):
        config.validate()


def test_image_guided_mask_head_trains(tmp_path, synthetic_dataset):
    model = modellib.MaskRCNN("training", ImageGuidedConfig(), str(tmp_path))
    km = model.keras_model
    assert km.get_layer("mrcnn_mask_image_conv1").get_weights()[0].shape == (3, 3, 3, 8)
    fuse = km.get_layer("mrcnn_mask_image_fuse").get_weights()[0]
    channels = ImageGuidedConfig.MASK_HEAD_CHANNELS
    assert fuse.shape == (1, 1, channels + 8, channels)
    history = model.train(synthetic_dataset, None, 1e-3, 1, "all", verbose=0)
    assert math.isfinite(history.history["mrcnn_mask_loss"][0])
    plain = modellib.MaskRCNN("training", TinyConfig(), str(tmp_path / "plain")).keras_model
    assert km.count_params() - plain.count_params() == (
        (3 * 3 * 3 * 8 + 8) + (3 * 3 * 8 * 8 + 8) + ((channels + 8) * channels + channels))


def test_image_guided_model_detects_and_round_trips_in_safe_mode(tmp_path):
    assert_detects_and_round_trips(ImageGuidedInferenceConfig(), tmp_path)


def test_loading_across_the_option_names_it(tmp_path, trained_dir):
    """A checkpoint trained without image guidance, loaded into a model with it (or the other
    way round): the error names MASK_IMAGE_CHANNELS; excluding the mask head loads."""
    guided = modellib.MaskRCNN("inference", ImageGuidedInferenceConfig(), trained_dir)
    with pytest.raises(ValueError, match="trained without MASK_IMAGE_CHANNELS"):
        guided.load_weights(guided.find_last())
    guided.load_weights(guided.find_last(), exclude=["mrcnn_mask.*"])
    path = guided.save_weights(str(tmp_path / "guided.weights.h5"))
    plain = modellib.MaskRCNN("inference", ZeroConfidenceConfig(), str(tmp_path))
    with pytest.raises(ValueError, match="trained with MASK_IMAGE_CHANNELS"):
        plain.load_weights(path)
