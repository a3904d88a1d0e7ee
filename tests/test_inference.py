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
