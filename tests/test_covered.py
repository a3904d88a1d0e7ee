"""DETECTION_MAX_COVERED_FRACTION: detections that higher-scored ones cover are dropped;
DETECTION_MIN_MASK_AREA: so are those left with fewer pixels outside them."""

import numpy as np
import pytest

from mrcnn.inference import Detector
from mrcnn.ops.boxes import norm_boxes
from mrcnn.ops.masks import uncovered_detections
from tests.conftest import TinyConfig


def _boxes_and_masks(boxes, shape=(10, 10)):
    """Full-box masks [H, W, N] for pixel boxes (y1, x1, y2, x2, exclusive)."""
    masks = np.zeros(shape + (len(boxes),), bool)
    for i, (y1, x1, y2, x2) in enumerate(boxes):
        masks[y1:y2, x1:x2, i] = True
    return np.array(boxes), masks


def test_hand_computed_cover():
    # Given in no score order. a: rows 0-3 (16 px, best score); b: rows 2-5 (8 of its 16 px
    # under a: 0.5 covered); d: rows 4-7 (8 px under b, none under a); c: apart; e: empty.
    boxes, masks = _boxes_and_masks([(4, 0, 8, 4), (0, 0, 4, 4), (6, 6, 8, 8), (2, 0, 6, 4),
                                     (0, 8, 0, 8)])
    d, a, c, b, e = range(5)
    scores = np.array([0.6, 0.9, 0.7, 0.8, 0.5])
    # 0.4: b goes (0.5 > 0.4). d is then not covered at all: a dropped mask claims nothing.
    np.testing.assert_array_equal(uncovered_detections(boxes, masks, scores, 0.4), [d, a, c, e])
    # 0.5: b stays (0.5 is not more than 0.5), and d, half under b, stays too.
    np.testing.assert_array_equal(uncovered_detections(boxes, masks, scores, 0.5), [0, 1, 2, 3, 4])
    # 0.0: anything touching a higher-scored kept mask goes: b (under a), then d is free.
    np.testing.assert_array_equal(uncovered_detections(boxes, masks, scores, 0.0), [d, a, c, e])
    # 1.0 never drops (a mask cannot be covered by more than all of it).
    same, full = _boxes_and_masks([(0, 0, 4, 4), (0, 0, 4, 4)])
    np.testing.assert_array_equal(uncovered_detections(same, full, [0.9, 0.8], 1.0), [0, 1])
    np.testing.assert_array_equal(uncovered_detections(same, full, [0.8, 0.9], 0.99), [1])


def test_hand_computed_min_area():
    # a: 16 px (best score); b: 16 px, 8 under a; c: 4 px apart; e: empty.
    boxes, masks = _boxes_and_masks([(0, 0, 4, 4), (2, 0, 6, 4), (6, 6, 8, 8), (0, 8, 0, 8)])
    scores = np.array([0.9, 0.8, 0.7, 0.5])
    # 5 px: c (4 px) and the empty e go; b keeps 8 px outside a.
    np.testing.assert_array_equal(uncovered_detections(boxes, masks, scores, 1.0, 5), [0, 1])
    # 9 px: b's 8 free pixels are too few, though its whole mask has 16.
    np.testing.assert_array_equal(uncovered_detections(boxes, masks, scores, 1.0, 9), [0])
    # 4 px: c stays (4 is not fewer than 4); the empty one goes once a minimum is set.
    np.testing.assert_array_equal(uncovered_detections(boxes, masks, scores, 1.0, 4), [0, 1, 2])
    np.testing.assert_array_equal(uncovered_detections(boxes, masks, scores, 1.0), [0, 1, 2, 3])
    # With the cover rule as well: at 0.4 b goes for its cover, so it claims nothing.
    np.testing.assert_array_equal(uncovered_detections(boxes, masks, scores, 0.4, 4), [0, 2])
    # A dropped speck claims no pixels: the lower-scored detection under it keeps them.
    speck, both = _boxes_and_masks([(0, 0, 2, 2), (0, 0, 4, 4)])
    np.testing.assert_array_equal(uncovered_detections(speck, both, [0.9, 0.8], 0.2, 5), [1])


def _unmold(max_covered, min_area=0):
    """Detector.unmold_detections on three hand-made detections of a 40 x 40 image: a (0.9),
    b (0.8) three quarters inside a, c (0.7) apart; every mask probability 1 (full boxes)."""
    class Covered(TinyConfig):
        DETECTION_MAX_COVERED_FRACTION = max_covered
        DETECTION_MIN_MASK_AREA = min_area
    config = Covered()
    pixel_boxes = np.array([[0, 0, 20, 20], [0, 5, 20, 25], [30, 30, 38, 38]], np.float32)
    shape = (40, 40, 3)
    detections = np.zeros((config.DETECTION_MAX_INSTANCES, 6), np.float32)
    detections[:3, :4] = norm_boxes(pixel_boxes, shape)
    detections[:3, 4] = 1
    detections[:3, 5] = [0.9, 0.8, 0.7]
    mrcnn_mask = np.ones((config.DETECTION_MAX_INSTANCES, 28, 28, 2), np.float32)
    return Detector(config, keras_model=None).unmold_detections(
        detections, mrcnn_mask, shape, shape, np.array([0, 0, 40, 40]))


def test_unmold_drops_covered_detections():
    boxes, class_ids, scores, masks = _unmold(None)
    np.testing.assert_array_equal(boxes, [[0, 0, 20, 20], [0, 5, 20, 25], [30, 30, 38, 38]])
    assert masks.shape == (40, 40, 3) and masks[..., 1].sum() == 400
    boxes, class_ids, scores, masks = _unmold(0.5)      # b is 0.75 covered
    np.testing.assert_array_equal(boxes, [[0, 0, 20, 20], [30, 30, 38, 38]])
    np.testing.assert_allclose(scores, [0.9, 0.7])
    np.testing.assert_array_equal(class_ids, [1, 1])
    assert masks.shape == (40, 40, 2) and masks[..., 1].sum() == 64
    assert len(_unmold(0.8)[2]) == 3                    # 0.75 is not more than 0.8


def test_unmold_drops_small_detections_without_the_cover_rule():
    """DETECTION_MIN_MASK_AREA alone: b keeps 100 of its 400 px outside a, c has 64."""
    assert TinyConfig().DETECTION_MIN_MASK_AREA == 0
    np.testing.assert_allclose(_unmold(None, 64)[2], [0.9, 0.8, 0.7])
    np.testing.assert_allclose(_unmold(None, 65)[2], [0.9, 0.8])
    np.testing.assert_allclose(_unmold(None, 101)[2], [0.9])


@pytest.mark.parametrize("value", [-0.1, 1.5, True, "0.3"])
def test_config_rejects_bad_fraction(value):
    config = TinyConfig()
    config.DETECTION_MAX_COVERED_FRACTION = value
    with pytest.raises(ValueError, match="DETECTION_MAX_COVERED_FRACTION"):
        config.validate()
    for good in (None, 0, 0.3, 1):
        config.DETECTION_MAX_COVERED_FRACTION = good
        config.validate()


def test_savedmodel_twin_keeps_the_same_detections():
    """mrcnn.export.uncovered_detections_tf (the SavedModel's) keeps what uncovered_detections
    keeps, on random overlapping discs."""
    import tensorflow as tf
    from mrcnn.export import uncovered_detections_tf
    rng = np.random.RandomState(0)
    yy, xx = np.mgrid[:48, :48]
    for trial in range(4):
        n = 12
        cy, cx, r = rng.uniform(6, 42, n), rng.uniform(6, 42, n), rng.uniform(3, 9, n)
        masks = np.stack([(yy - y) ** 2 + (xx - x) ** 2 <= q * q for y, x, q in zip(cy, cx, r)],
                         axis=-1)
        masks[..., 3] = False                                   # an empty one is kept
        boxes = np.array([[0, 0, 48, 48]] * n)
        scores = rng.permutation(n).astype(np.float32) / n
        for fraction, min_area in ((0.0, 0), (0.2, 0), (0.5, 0), (0.2, 40), (1.0, 60), (None, 60)):
            expected = uncovered_detections(boxes, masks, scores, fraction, min_area)
            got = uncovered_detections_tf(tf.constant(np.moveaxis(masks, -1, 0)),
                                          tf.constant(scores), fraction, min_area).numpy()
            np.testing.assert_array_equal(got, expected)
            if fraction == 0.2:
                assert (3 in got) == (min_area == 0) and 0 < len(got) < n
        assert len(uncovered_detections(boxes, masks, scores, 0.2, 40)) < \
            len(uncovered_detections(boxes, masks, scores, 0.2))
