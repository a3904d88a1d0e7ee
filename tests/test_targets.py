"""RPN targets: labels, balance, deltas; empty and crowd ground truth."""

import numpy as np
import pytest

from mrcnn.data.targets import build_rpn_targets
from mrcnn.ops.anchors import backbone_shapes, generate_pyramid_anchors
from mrcnn.ops.boxes import apply_box_deltas
from tests.conftest import load_benchmark

STD = np.array([0.1, 0.1, 0.2, 0.2])


def _anchors():
    strides = [4, 8, 16, 32, 64]
    return generate_pyramid_anchors((8, 16, 32, 64, 128), [0.5, 1, 2],
                                    backbone_shapes((128, 128), strides), strides, 1)


def test_rpn_targets_balance_and_deltas():
    anchors = _anchors()
    gt = np.array([[10, 10, 30, 30], [60, 60, 100, 90], [5, 80, 15, 90]])
    match, deltas = build_rpn_targets(anchors, np.array([1, 1, 1]), gt, 64, STD,
                                      rng=np.random.RandomState(0))
    positives = np.flatnonzero(match == 1)
    assert 3 <= len(positives) <= 32
    assert (match != 0).sum() == 64                       # positives + negatives fill the quota
    # Positive deltas reproduce a ground-truth box from each positive anchor.
    rebuilt = apply_box_deltas(anchors[positives], deltas[:len(positives)] * STD)
    best = [np.abs(gt - r).sum(axis=1).min() for r in rebuilt]
    assert max(best) < 1e-2
    assert not deltas[len(positives):].any()


def test_rpn_targets_empty_ground_truth_all_negative():
    match, deltas = build_rpn_targets(_anchors(), np.zeros([0]), np.zeros([0, 4]), 64, STD)
    assert (match == 1).sum() == 0 and (match == -1).sum() == 64
    assert not deltas.any()


def test_rpn_targets_crowd_box_is_not_negative():
    anchors = _anchors()
    crowd = np.array([[0, 0, 64, 64]])
    match, _ = build_rpn_targets(anchors, np.array([-1]), crowd, 100000, STD)
    inside = (anchors[:, 0] >= 0) & (anchors[:, 2] <= 64) & (anchors[:, 1] >= 0) & \
        (anchors[:, 3] <= 64)
    assert (match[inside] == 0).all()
    assert (match == 1).sum() == 0


def test_rpn_targets_thresholds_from_arguments():
    """An anchor at IoU 0.6 with a box: neutral at 0.7 / 0.3, positive at 0.5; one at IoU 0.25
    is negative at 0.3 and neutral at negative_iou 0.2. The box's best anchor is positive."""
    gt = np.array([[0, 0, 10, 10]], np.float32)
    anchors = np.array([[0, 0, 10, 10],        # IoU 1: the best anchor
                        [0, 0, 10, 6],         # IoU 0.6
                        [0, 0, 10, 2.5],       # IoU 0.25
                        [50, 50, 60, 60]],     # IoU 0
                       np.float32)
    default, _ = build_rpn_targets(anchors, np.array([1]), gt, 100, STD)
    assert default.tolist() == [1, 0, -1, -1]
    lower, deltas = build_rpn_targets(anchors, np.array([1]), gt, 100, STD,
                                      positive_iou=0.5, negative_iou=0.2)
    assert lower.tolist() == [1, 1, 0, -1]
    # The second positive's deltas stretch its 6 px width to the box's 10.
    assert deltas[1, 3] == pytest.approx(np.log(10 / 6) / STD[3])


def test_anchor_coverage_hand_computed():
    """benchmarks/anchor_coverage.py: best anchor IoU and anchor counts per size bucket."""
    module = load_benchmark("anchor_coverage")
    anchors = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [40, 40, 44, 44]], np.float32)
    crops = [np.array([[0, 0, 10, 10]]), np.zeros((0, 4)), np.array([[40, 40, 46, 46]])]
    # At x2 the 100 px box is 25 px of the original image, the 36 px box 9 px: both < 60.
    (small,) = module.coverage(crops, anchors, scale=2.0)
    assert small["area_px"] == "<60" and small["boxes"] == 2
    assert small["median_best_iou"] == pytest.approx((1.0 + 16 / 36) / 2)
    assert small["anchors_iou_0.5"] == pytest.approx(1.0)     # 2 anchors, then 0
    assert small["anchors_iou_0.7"] == pytest.approx(0.5)     # 1, then 0
    rows = module.coverage(crops, anchors)                    # scale 1: 100 px and 36 px
    assert [(r["area_px"], r["boxes"]) for r in rows] == [("<60", 1), ("60-150", 1)]
