"""RPN targets: labels, balance, deltas; empty and crowd ground truth."""

import numpy as np
import pytest

from mrcnn.data.targets import build_rpn_targets, sample_distinct
from mrcnn.ops.anchors import (AnchorGrid, backbone_shapes, generate_pyramid_anchors,
                               pyramid_anchors)
from mrcnn.ops.boxes import apply_box_deltas, compute_overlaps, touching_boxes
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


@pytest.mark.parametrize("n, k", [(30000, 64), (100, 40), (10, 10), (5, 0)])
def test_sample_distinct_draws_uniform_subsets(n, k):
    """k distinct values of range(n); over many draws every value (or, for n = 30 000, every
    range of 1000 values) is picked about equally often (within 6 standard deviations), for
    k << n and k near n."""
    rng = np.random.RandomState(0)
    counts = np.zeros(n)
    draws = 20000 if n <= 100 else 300
    for _ in range(draws):
        picked = sample_distinct(rng, n, k)
        assert len(picked) == k == len(set(picked.tolist())) and picked.dtype == np.int64
        assert ((0 <= picked) & (picked < n)).all()
        counts[picked] += 1
    if n <= 100:
        expected = draws * k / n
        assert np.abs(counts - expected).max() <= 6 * np.sqrt(expected * (1 - k / n)) + 1e-9
    else:      # 300 x 64 picks of 30 000 values, counted in 30 bins of 1000 values
        per_bin = counts.reshape(30, -1).sum(axis=1)
        assert np.abs(per_bin - draws * k / 30).max() <= 6 * np.sqrt(draws * k / 30)
    # The first of many draws are not biased towards small or large values.
    low = np.mean([sample_distinct(rng, 1000, 10).mean() for _ in range(2000)])
    assert abs(low - 499.5) < 6 * 289 / np.sqrt(20000)


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


def _dense_rpn_match(anchors, gt_boxes, positive_iou, negative_iou):
    """The labels from the full anchor x box IoU matrix, before sampling: 1 / -1 / 0."""
    overlaps = compute_overlaps(anchors, gt_boxes)
    best_iou = overlaps.max(axis=1)
    match = np.where(best_iou < negative_iou, -1, 0)
    best_per_gt = overlaps.max(axis=0)
    match[np.argwhere((overlaps == best_per_gt) & (best_per_gt > 0))[:, 0]] = 1
    match[best_iou >= positive_iou] = 1
    return match


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rpn_targets_label_every_anchor_as_the_full_iou_matrix_does(seed):
    """The IoU is computed only for anchors touching a box; every label (and with the
    sampling quota out of the way, every delta) equals the dense computation's."""
    rng = np.random.RandomState(seed)
    anchors = _anchors()
    corners = rng.randint(0, 110, (12, 2))
    gt = np.concatenate([corners, corners + rng.randint(3, 40, (12, 2))], axis=1)
    match, deltas = build_rpn_targets(anchors, np.ones(12), gt, 10 ** 6, STD,
                                      positive_iou=0.5, negative_iou=0.3)
    assert match.tolist() == _dense_rpn_match(anchors, gt, 0.5, 0.3).tolist()
    positives = np.flatnonzero(match == 1)
    best_gt = compute_overlaps(anchors[positives], gt).argmax(axis=1)
    rebuilt = apply_box_deltas(anchors[positives], deltas[:len(positives)] * STD)
    assert np.abs(rebuilt - gt[best_gt]).max() < 1e-2


GRIDS = [((128, 128), [8, 16, 32, 64, 128], [0.5, 1, 2], 1, (1.0,)),
         ((96, 160), [8, 16, 32, 64, 128], [0.5, 1, 2], 2, (1.0, 2 ** 0.5)),   # not square
         ((256, 256), [8, 16, 32, 64, 128], [0.5, 1, 2], 1, (1.0, 2 ** 0.5))]  # the nucleus crop


def _random_boxes(rng, n, image_hw, integer):
    """[n, 4] pixel boxes, some reaching past the image's edges, some 1 px wide."""
    corners = rng.uniform(-10, np.array(image_hw) + 5, (n, 2))
    sides = rng.choice([1, 3, 12, 40, 100], (n, 2)) * rng.uniform(0.8, 1.2, (n, 2))
    boxes = np.concatenate([corners, corners + sides], axis=1)
    return np.round(boxes) if integer else boxes


@pytest.mark.parametrize("image_hw, scales, ratios, anchor_stride, octave", GRIDS)
def test_anchor_grid_finds_every_overlapping_pair(image_hw, scales, ratios, anchor_stride, octave):
    """The grid's anchors are pyramid_anchors'; its pairs hold every (anchor, box) with a
    positive overlap (checked against the full IoU matrix), each once; the pair IoUs equal the
    matrix's to the last bit."""
    strides = [4, 8, 16, 32, 64]
    grid = AnchorGrid(image_hw, scales, ratios, strides, anchor_stride, octave)
    assert (grid.anchors == pyramid_anchors(image_hw, scales, ratios, strides, anchor_stride,
                                            octave)).all()
    rng = np.random.RandomState(len(grid))
    for integer in (True, False):
        boxes = _random_boxes(rng, 25, image_hw, integer)
        anchor, box = grid.pairs(boxes)
        dense = compute_overlaps(grid.anchors, boxes)
        pairs = set(zip(anchor.tolist(), box.tolist()))
        assert len(pairs) == len(anchor)
        assert set(zip(*np.nonzero(dense > 0))) <= pairs
        assert len(pairs) < 2 * (dense > 0).sum()          # near the overlapping pairs only
        assert (grid.pair_overlaps(anchor, boxes[box]) == dense[anchor, box]).all()
    assert [len(a) for a in grid.pairs(np.zeros((0, 4)))] == [0, 0]


@pytest.mark.parametrize("image_hw, scales, ratios, anchor_stride, octave", GRIDS)
def test_rpn_targets_on_the_anchor_grid_equal_the_plain_anchors(image_hw, scales, ratios,
                                                                anchor_stride, octave):
    """The same labels and deltas (and sampling) from an AnchorGrid as from its anchors:
    integer and fractional boxes, duplicated boxes (tied IoUs), crowd boxes, no boxes."""
    grid = AnchorGrid(image_hw, scales, ratios, [4, 8, 16, 32, 64], anchor_stride, octave)
    rng = np.random.RandomState(7)
    for case in range(8):
        boxes = _random_boxes(rng, rng.randint(0, 30), image_hw, integer=case % 2 == 0)
        if case == 2:
            boxes = np.concatenate([boxes, boxes[:4]])                  # tied best anchors
        if case == 3:   # two boxes with the same IoU (0.5625) with the 16 px anchor at (64, 64)
            boxes = np.array([[60, 58, 72, 70], [56, 58, 68, 70]], np.float64)
        class_ids = np.where(rng.uniform(size=len(boxes)) < (0.2 if case > 4 else 0), -1, 1)
        results = [build_rpn_targets(a, class_ids, boxes, 64, STD, rng=np.random.RandomState(case),
                                     positive_iou=0.5, negative_iou=0.3)
                   for a in (grid, grid.anchors)]
        assert (results[0][0] == results[1][0]).all() and (results[0][1] == results[1][1]).all()
        assert (results[0][0] == 1).any() == (class_ids > 0).any()


def test_touching_boxes_marks_exactly_the_overlapping_boxes():
    """Integer boxes: exactly those with IoU > 0; fractional ones: at least those."""
    rng = np.random.RandomState(0)
    boxes = rng.uniform(-20, 120, (500, 2))
    boxes = np.concatenate([boxes, boxes + rng.uniform(0, 30, (500, 2))], axis=1)
    corners = rng.randint(0, 100, (6, 2))
    others = np.concatenate([corners, corners + rng.randint(1, 25, (6, 2))], axis=1)
    overlapping = (compute_overlaps(boxes, others) > 0).any(axis=1)
    assert 0 < overlapping.sum() < len(boxes)
    assert touching_boxes(boxes, others).tolist() == overlapping.tolist()
    fractional = others + rng.uniform(-0.5, 0.5, others.shape)
    touching = touching_boxes(boxes, fractional)
    assert touching[(compute_overlaps(boxes, fractional) > 0).any(axis=1)].all()
    # Edge cases: boxes sharing only an edge do not overlap; no others, nothing touches.
    assert touching_boxes(np.array([[0, 10, 5, 20], [0, 9.5, 5, 20]]),
                          np.array([[0, 0, 5, 10]])).tolist() == [False, True]
    assert not touching_boxes(boxes, np.zeros((0, 4))).any()
