"""detect(): any number of images of any size, one trace per shape, save/load round trips."""

import numpy as np

from mrcnn import model as modellib
from tests.conftest import ZeroConfidenceConfig


def _same(a, b):
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        for key in ("rois", "class_ids", "scores", "masks"):
            np.testing.assert_array_equal(ra[key], rb[key])


def test_detect_any_number_and_size(trained_dir):
    model = modellib.MaskRCNN("inference", ZeroConfidenceConfig(), trained_dir)
    model.load_weights(model.find_last())
    rng = np.random.RandomState(0)
    images = [rng.randint(0, 255, (h, w, 3)).astype(np.uint8)
              for h, w in ((128, 128), (90, 60), (128, 128), (40, 200), (128, 128))]
    results = model.detect(images)
    assert len(results) == 5
    for image, r in zip(images, results):
        n = len(r["class_ids"])
        assert n > 0
        assert r["masks"].shape == image.shape[:2] + (n,) and r["masks"].dtype == bool
        assert r["rois"].shape == (n, 4) and r["scores"].shape == (n,)
        assert (r["rois"][:, 2] <= image.shape[0]).all() and (r["rois"][:, 3] <= image.shape[1]).all()
        assert (r["scores"][:-1] >= r["scores"][1:]).all()
    # One molded shape (square mode) -> traced once, however many batches and calls.
    model.detect(images[:3])
    assert model.detector._predict.experimental_get_tracing_count() == 1
    # Batch padding must not change results: single-image calls give the same answers.
    _same([model.detect([images[1]])[0]], [results[1]])


def test_weights_and_keras_file_round_trip(trained_dir, tmp_path):
    config = ZeroConfidenceConfig()
    first = modellib.MaskRCNN("inference", config, trained_dir)
    first.load_weights(first.find_last())
    image = np.random.RandomState(1).randint(0, 255, (128, 128, 3)).astype(np.uint8)
    expected = first.detect([image])

    path = first.save_weights(tmp_path / "copy.weights.h5")
    second = modellib.MaskRCNN("inference", config, str(tmp_path))
    second.load_weights(path)
    _same(second.detect([image]), expected)

    keras_path = first.save(str(tmp_path / "model.keras"))
    third = modellib.MaskRCNN.from_keras_file(keras_path, config)
    _same(third.detect([image]), expected)


def test_box_refinement_pass_reuses_the_head(trained_dir, tmp_path):
    """DETECTION_BOX_REFINEMENTS=1: no new weights; the head's second pass runs on the boxes
    its first pass refined, and the class probabilities are the two passes' mean; the model
    saves and loads in safe mode."""
    from mrcnn.layers import RefineBoxes

    class RefinedConfig(ZeroConfidenceConfig):
        DETECTION_BOX_REFINEMENTS = 1

    one = modellib.MaskRCNN("inference", ZeroConfidenceConfig(), trained_dir)
    one.load_weights(one.find_last())
    two = modellib.MaskRCNN("inference", RefinedConfig(), trained_dir)
    two.load_weights(two.find_last())
    assert len(two.keras_model.weights) == len(one.keras_model.weights)
    image = np.random.RandomState(2).randint(0, 255, (128, 128, 3)).astype(np.uint8)
    first, refined = one.run_graph(image), two.run_graph(image)
    np.testing.assert_allclose(refined["rpn_rois"], first["rpn_rois"], atol=1e-6)
    np.testing.assert_array_equal(first["rois"], first["rpn_rois"])
    meta = one.mold_inputs([image])[1]
    expected = RefineBoxes(one.config.BBOX_STD_DEV)(
        [first["rpn_rois"][None], first["mrcnn_class"][None], first["mrcnn_bbox"][None],
         meta]).numpy()[0]
    np.testing.assert_allclose(refined["rois"], expected, atol=1e-5)
    assert not np.allclose(refined["rois"], first["rois"])
    # mean of two distributions: the second pass's probabilities, 2 * mean - first, are one too
    second_pass = 2 * refined["mrcnn_class"] - first["mrcnn_class"]
    assert second_pass.min() > -1e-5 and second_pass.max() < 1 + 1e-5
    np.testing.assert_allclose(second_pass.sum(axis=-1), 1.0, atol=1e-5)
    assert not np.allclose(second_pass, first["mrcnn_class"], atol=1e-3)

    expected_detections = two.detect([image])
    keras_path = two.save(str(tmp_path / "refined.keras"))
    _same(modellib.MaskRCNN.from_keras_file(keras_path, RefinedConfig()).detect([image]),
          expected_detections)


def test_unmold_mask_threshold_argument(trained_dir):
    """unmold_detections(mask_threshold=t) pastes the same detections at threshold t; without
    it, at the config's DETECTION_MASK_THRESHOLD."""
    model = modellib.MaskRCNN("inference", ZeroConfidenceConfig(), trained_dir)
    model.load_weights(model.find_last())
    image = np.random.RandomState(3).randint(0, 255, (128, 128, 3)).astype(np.uint8)
    g = model.run_graph(image)
    args = (g["detections"], g["mrcnn_mask"], image.shape, g["image"].shape, g["window"])
    default = model.unmold_detections(*args)
    same = model.unmold_detections(*args, mask_threshold=model.config.DETECTION_MASK_THRESHOLD)
    loose = model.unmold_detections(*args, mask_threshold=0.05)
    strict = model.unmold_detections(*args, mask_threshold=0.95)
    np.testing.assert_array_equal(default[3], same[3])
    for other in (loose, strict):
        np.testing.assert_array_equal(other[0], default[0])     # same boxes and scores
        np.testing.assert_array_equal(other[2], default[2])
    assert (strict[3] <= default[3]).all() and (default[3] <= loose[3]).all()
    assert strict[3].sum() < default[3].sum() < loose[3].sum()
