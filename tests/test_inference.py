"""detect(): any number of images of any size, one trace for every shape, save/load round
trips, the object-size second pass."""

import numpy as np
import pytest

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


def _fake_result(diameters, scores=None):
    """A detect() dict with one disc-like square mask per diameter (area pi d^2 / 4)."""
    masks = np.zeros((400, 400, len(diameters)), bool)
    for i, d in enumerate(diameters):
        side = int(round(np.sqrt(np.pi) * d / 2))
        masks[:side, :side, i] = True
    scores = np.ones(len(diameters), np.float32) if scores is None else np.asarray(scores)
    return {"masks": masks, "scores": scores}


class PadConfig(ZeroConfidenceConfig):
    IMAGE_RESIZE_MODE = "pad64"
    IMAGE_MIN_DIM = IMAGE_MAX_DIM = 64
    IMAGE_MIN_SCALE = 2.0
    OBJECT_SIZE_TARGET = 32.0
    OBJECT_SCALE_RANGE = (0.5, 4.0)
    DETECTION_MIN_CONFIDENCE = 0.5


def test_object_scale_rule(trained_dir):
    model = modellib.MaskRCNN("inference", PadConfig(), trained_dir)
    detector = model.detector
    assert detector.default_scale((100, 100, 3)) == 2.0
    # median diameter 10 px -> 3.2; 30 px -> 1.07; 17 px -> 1.88 (within 20 % of 2: kept)
    assert detector.object_scale((100, 100, 3), _fake_result([8, 10, 40])) == \
        pytest.approx(3.2, rel=0.02)
    assert detector.object_scale((100, 100, 3), _fake_result([30, 30, 31])) == \
        pytest.approx(32 / 30, rel=0.02)
    assert detector.object_scale((100, 100, 3), _fake_result([17, 17, 17])) is None
    # low-scored detections do not count; fewer than 3 objects: no second pass
    assert detector.object_scale((100, 100, 3), _fake_result([8, 10, 40], [0.9, 0.9, 0.1])) \
        is None
    # clipped to the range, and to the long-side cap, though never below the config's scale
    assert detector.object_scale((100, 100, 3), _fake_result([2, 2, 2])) == 4.0
    assert detector.object_scale((1500, 100, 3), _fake_result([2, 2, 2])) == \
        pytest.approx(4096 / 1500)
    assert detector.object_scale((3000, 100, 3), _fake_result([2, 2, 2])) is None


def test_detect_runs_again_at_the_object_scale(trained_dir):
    model = modellib.MaskRCNN("inference", PadConfig(), trained_dir)
    model.load_weights(model.find_last())
    image = np.random.RandomState(1).randint(0, 255, (96, 80, 3)).astype(np.uint8)
    first = model.detector.detect_at([image], [None])[0]
    scale = model.detector.object_scale(image.shape, first)
    assert scale is not None     # random-weight detections are far from 32 px wide
    expected = model.detector.detect_at([image], [scale])[0]
    result = model.detect([image])[0]
    for key in ("rois", "class_ids", "scores", "masks"):
        np.testing.assert_array_equal(result[key], expected[key])
    assert result["masks"].shape[:2] == image.shape[:2]
    # off: the first pass is the answer
    PadConfig.OBJECT_SIZE_TARGET = None
    try:
        plain = modellib.MaskRCNN("inference", PadConfig(), trained_dir)
        plain.load_weights(plain.find_last())
        np.testing.assert_array_equal(plain.detect([image])[0]["masks"], first["masks"])
    finally:
        PadConfig.OBJECT_SIZE_TARGET = 32.0


def test_one_trace_for_every_image_size(trained_dir):
    """Images molding to three shapes run through one trace of the graph, and its outputs
    at each shape are the Keras model's own at that shape."""
    class PadOnly(PadConfig):
        OBJECT_SIZE_TARGET = None
    model = modellib.MaskRCNN("inference", PadOnly(), trained_dir)
    model.load_weights(model.find_last())
    rng = np.random.RandomState(3)
    images = [rng.randint(0, 255, shape).astype(np.uint8)
              for shape in ((60, 60, 3), (40, 100, 3), (96, 70, 3))]
    shapes = set()
    for image in images:
        molded, metas, _ = model.mold_inputs([image])
        shapes.add(molded.shape)
        out = model.detector.run(molded, metas)
        anchors = model.detector.get_anchors(molded.shape[1:])[None]
        direct = model.keras_model({"input_image": molded, "input_image_meta": metas,
                                    "input_anchors": anchors}, training=False)
        for key in ("detections", "mrcnn_mask"):
            np.testing.assert_allclose(out[key], np.asarray(direct[key]), atol=1e-5)
    assert len(shapes) == 3
    model.detect(images)
    assert model.detector._predict.experimental_get_tracing_count() == 1


def test_a_16_bit_image_detects_as_its_8_bit_view(trained_dir):
    """detect() molds a 16-bit image and measures its grey levels (intensity band on) from
    one 8-bit view: the same detections as for that view given as uint8."""
    from mrcnn.ops.image import to_rgb_uint8

    class Band(ZeroConfidenceConfig):
        DETECTION_MASK_INTENSITY_BAND = (0.2, 0.7)
    model = modellib.MaskRCNN("inference", Band(), trained_dir)
    model.load_weights(model.find_last())
    deep = (np.random.RandomState(4).randint(0, 255, (128, 128)) * 200).astype(np.uint16)
    view = to_rgb_uint8(deep)
    assert view.dtype == np.uint8 and view.shape == (128, 128, 3)
    result = model.detect([deep])[0]
    assert len(result["scores"]) > 0
    _same([result], model.detect([view]))


def test_a_16_bit_image_is_converted_once_for_both_passes(trained_dir, monkeypatch):
    """With OBJECT_SIZE_TARGET's second pass, a 16-bit image is brought to 8 bits once (molding
    passes the uint8 result through the converter too, which leaves it as it is), and detects
    as its 8-bit view does."""
    import mrcnn.inference as inference
    calls = []
    convert = inference.to_rgb_uint8

    def counting(image, *args):
        if np.asarray(image).dtype != np.uint8:
            calls.append(np.asarray(image).dtype)
        return convert(image, *args)
    monkeypatch.setattr(inference, "to_rgb_uint8", counting)
    model = modellib.MaskRCNN("inference", PadConfig(), trained_dir)
    model.load_weights(model.find_last())
    deep = (np.random.RandomState(1).randint(0, 255, (96, 80, 3)) * 250).astype(np.uint16)
    result = model.detect([deep])[0]
    assert len(calls) == 1
    view = convert(deep, 3)
    assert model.detector.object_scale(view.shape, model.detector.detect_at([view], [None])[0])
    _same([result], model.detect([view]))
    assert len(calls) == 1       # a uint8 image is never converted


def test_a_given_scale_needs_the_pad64_mode():
    from mrcnn.inference import Detector
    image = np.zeros((40, 50, 3), np.uint8)
    with pytest.raises(ValueError, match="pad64"):
        Detector(ZeroConfidenceConfig(), keras_model=None).mold_inputs([image], [1.5])
    molded, metas, windows = Detector(PadConfig(), keras_model=None).mold_inputs([image], [1.5])
    assert molded.shape == (1, 64, 128, 3) and tuple(windows[0]) == (2, 26, 62, 101)


def test_anchors_are_cached_per_shape():
    from mrcnn.config import anchor_settings
    from mrcnn.inference import ANCHOR_CACHE_SHAPES, Detector
    from mrcnn.ops.anchors import pyramid_anchors
    from mrcnn.ops.boxes import norm_boxes

    config = PadConfig()
    detector = Detector(config, keras_model=None)
    first = detector.get_anchors((128, 192, 3))
    expected = norm_boxes(pyramid_anchors((128, 192, 3), **anchor_settings(config)), (128, 192))
    np.testing.assert_allclose(first, expected, rtol=1e-6)
    assert detector.get_anchors((128, 192, 3)) is first and not first.flags.writeable
    for side in range(1, ANCHOR_CACHE_SHAPES + 1):      # 8 newer shapes push it out
        detector.get_anchors((64, 64 * side, 3))
    assert detector.get_anchors((128, 192, 3)) is not first


def _squares(specs, shape=(60, 60)):
    """A detect() dict of square masks: specs = [(y, x, side, score), ...]."""
    masks = np.zeros(shape + (len(specs),), bool)
    for i, (y, x, side, _) in enumerate(specs):
        masks[y:y + side, x:x + side, i] = True
    rois = np.array([[y, x, y + side, x + side] for y, x, side, _ in specs], np.int32)
    return {"rois": rois.reshape(-1, 4), "class_ids": np.ones(len(specs), np.int32),
            "scores": np.array([s for *_, s in specs], np.float32), "masks": masks}


def test_pool_detections_lets_in_large_objects_and_drops_what_they_cover():
    from mrcnn.inference import pool_detections
    first = _squares([(0, 0, 5, 0.9),        # a fragment inside the second pass's big object
                      (40, 40, 10, 0.8)])    # an object of its own
    second = _squares([(0, 0, 20, 0.95),     # 400 px: pooled, outscores the fragment
                       (30, 0, 4, 0.99),     # 16 px: under min_area, never pooled
                       (38, 38, 12, 0.5)])   # 144 px, 100 of them inside the 0.8 object
    pooled = pool_detections(first, second, min_area=100, max_covered=0.2)
    np.testing.assert_allclose(pooled["scores"], [0.95, 0.8])
    np.testing.assert_array_equal(pooled["rois"], [[0, 0, 20, 20], [40, 40, 50, 50]])
    assert pooled["masks"].shape == (60, 60, 2) and pooled["masks"][..., 0].sum() == 400
    # The fragment outscoring the big object keeps its place; the big one, 25 of its 400
    # pixels covered (6 %), stays too at a 0.2 cover limit and goes at 0.05.
    first["scores"][0] = 0.97
    assert pool_detections(first, second, 100, 0.2)["scores"].tolist() == \
        pytest.approx([0.97, 0.95, 0.8])
    assert pool_detections(first, second, 100, 0.05)["scores"].tolist() == \
        pytest.approx([0.97, 0.8])
    # Nothing large enough in the second pass: the first pass as it was.
    alone = pool_detections(first, second, min_area=1000, max_covered=0.2)
    np.testing.assert_array_equal(alone["masks"], first["masks"][..., [0, 1]])
    empty = _squares([])
    assert pool_detections(empty, empty, 0, 0.2)["masks"].shape == (60, 60, 0)


class HalfScaleConfig(PadConfig):
    OBJECT_SIZE_TARGET = None
    DETECTION_MAX_COVERED_FRACTION = 0.2
    HALF_SCALE_PASS_MIN_AREA = 0


def test_detect_pools_the_half_scale_pass(trained_dir):
    from mrcnn.inference import pool_detections
    model = modellib.MaskRCNN("inference", HalfScaleConfig(), trained_dir)
    model.load_weights(model.find_last())
    image = np.random.RandomState(2).randint(0, 255, (96, 80, 3)).astype(np.uint8)
    full = model.detector.detect_at([image], [None])[0]
    half = model.detector.detect_at([image], [1.0])[0]     # half of the config's x2
    assert len(full["scores"]) and len(half["scores"])
    expected = pool_detections(full, half, 0, 0.2)
    result = model.detect([image])[0]
    for key in ("rois", "class_ids", "scores", "masks"):
        np.testing.assert_array_equal(result[key], expected[key])
    assert len(result["scores"]) > len(full["scores"])      # the half pass adds detections


def test_half_scale_pass_follows_the_object_size_pass(trained_dir):
    from mrcnn.inference import pool_detections

    class Both(HalfScaleConfig):
        OBJECT_SIZE_TARGET = 32.0
    model = modellib.MaskRCNN("inference", Both(), trained_dir)
    model.load_weights(model.find_last())
    image = np.random.RandomState(1).randint(0, 255, (96, 80, 3)).astype(np.uint8)
    scale = model.detector.object_scale(image.shape, model.detector.detect_at([image], [None])[0])
    assert scale is not None and scale != 2.0
    expected = pool_detections(model.detector.detect_at([image], [scale])[0],
                               model.detector.detect_at([image], [scale / 2])[0], 0, 0.2)
    result = model.detect([image])[0]
    for key in ("rois", "class_ids", "scores", "masks"):
        np.testing.assert_array_equal(result[key], expected[key])


def test_half_scale_pass_settings_are_checked():
    from mrcnn.inference import Detector

    class NoCoverRule(HalfScaleConfig):
        DETECTION_MAX_COVERED_FRACTION = None
    with pytest.raises(ValueError, match="DETECTION_MAX_COVERED_FRACTION"):
        Detector(NoCoverRule(), keras_model=None)

    class Square(HalfScaleConfig):
        IMAGE_RESIZE_MODE = "square"
    with pytest.raises(ValueError, match="pad64"):
        Square().validate()

    class Negative(HalfScaleConfig):
        HALF_SCALE_PASS_MIN_AREA = -1
    with pytest.raises(ValueError, match="HALF_SCALE_PASS_MIN_AREA"):
        Negative().validate()
    HalfScaleConfig().validate()
