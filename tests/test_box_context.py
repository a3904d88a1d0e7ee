"""BOX_HEAD_CONTEXT: the box head pools each ROI and the ROI grown about its centre."""

import math

import keras
import numpy as np
import pytest

from mrcnn import model as modellib
from mrcnn.layers import ContextBoxes, PyramidROIAlign
from tests.conftest import TinyConfig, ZeroConfidenceConfig


class ContextConfig(TinyConfig):
    BOX_HEAD_CONTEXT = 2.0


class ContextInferenceConfig(ZeroConfidenceConfig):
    BOX_HEAD_CONTEXT = 2.0


def test_context_boxes_grow_about_the_centre_and_clip():
    boxes = np.array([[0.4, 0.4, 0.6, 0.5],        # 0.2 x 0.1, centre (0.5, 0.45)
                      [0.0, 0.9, 0.2, 1.0]], np.float32)
    out = ContextBoxes(2.0)(boxes).numpy()
    np.testing.assert_allclose(out[0], [0.3, 0.35, 0.7, 0.55], atol=1e-6)
    np.testing.assert_allclose(out[1], [0.0, 0.85, 0.3, 1.0], atol=1e-6)   # clipped to [0, 1]
    assert ContextBoxes.from_config(ContextBoxes(1.5).get_config()).factor == 1.5


def test_config_rejects_a_context_that_does_not_grow():
    config = TinyConfig()
    config.BOX_HEAD_CONTEXT = 1.0
    with pytest.raises(ValueError, match="BOX_HEAD_CONTEXT=1.0"):
        config.validate()


def test_context_head_trains_and_sees_twice_the_channels(tmp_path, synthetic_dataset):
    model = modellib.MaskRCNN("training", ContextConfig(), str(tmp_path))
    kernel = model.keras_model.get_layer("mrcnn_class_conv1").get_weights()[0]
    assert kernel.shape == (7, 7, 2 * ContextConfig.TOP_DOWN_PYRAMID_SIZE,
                            ContextConfig.FPN_CLASSIF_FC_LAYERS_SIZE)
    history = model.train(synthetic_dataset, None, 1e-3, 1, "all", verbose=0)
    assert math.isfinite(history.history["mrcnn_class_loss"][0])


def test_context_features_are_the_grown_boxes_pooled(tmp_path):
    """The box head's input: the ROI's pooled features, then those of the ROI grown 2x pooled
    from the level its own size picks; the model round-trips in Keras safe mode."""
    keras.utils.set_random_seed(0)
    model = modellib.MaskRCNN("inference", ContextInferenceConfig(), str(tmp_path))
    image = np.random.RandomState(4).randint(0, 255, (128, 128, 3)).astype(np.uint8)
    km = model.keras_model
    probe = keras.Model(km.input, [km.get_layer("roi_and_context").output,
                                    km.get_layer("ROI").output]
                        + [km.get_layer(f"fpn_p{i}").output for i in range(2, 6)])
    molded, metas, _ = model.mold_inputs([image])
    anchors = model.get_anchors(molded[0].shape)[None]
    size = ContextInferenceConfig.IMAGES_PER_GPU
    meta = np.repeat(metas, size, 0)
    joined, rois, *features = (v.numpy() for v in probe(
        {"input_image": np.repeat(molded, size, 0), "input_image_meta": meta,
         "input_anchors": np.repeat(anchors, size, 0).astype(np.float32)}, training=False))
    channels = ContextInferenceConfig.TOP_DOWN_PYRAMID_SIZE
    assert joined.shape[1:] == (7, 7, 2 * channels)
    boxes = rois[0]                      # image 0's ROIs, padding rows included
    count = len(boxes)
    assert np.any(boxes != 0)
    index = np.zeros(count, np.int32)
    own = PyramidROIAlign((7, 7))([boxes, index, meta] + features).numpy()
    grown = PyramidROIAlign((7, 7))([ContextBoxes(2.0)(boxes), index, meta] + features).numpy()
    np.testing.assert_allclose(joined[:count, ..., :channels], own, atol=1e-4)
    np.testing.assert_allclose(joined[:count, ..., channels:], grown, atol=1e-4)
    assert not np.allclose(own, grown, atol=1e-3)

    expected = model.detect([image])
    path = model.save(str(tmp_path / "context.keras"))
    again = modellib.MaskRCNN.from_keras_file(path, ContextInferenceConfig()).detect([image])
    for key in ("rois", "class_ids", "scores", "masks"):
        np.testing.assert_array_equal(again[0][key], expected[0][key])


def test_loading_across_the_option_names_it(trained_dir):
    """A checkpoint trained without context, loaded into a context model: the error says so."""
    model = modellib.MaskRCNN("inference", ContextInferenceConfig(), trained_dir)
    with pytest.raises(ValueError, match="trained without BOX_HEAD_CONTEXT"):
        model.load_weights(model.find_last())
