"""Metrics on hand-computed cases: pixel IoU/Dice, DSB2018 score, VOC AP, COCO AP, RLE."""

import numpy as np
import pytest

from mrcnn import metrics
from tests.conftest import load_benchmark


def stack(*masks):
    return np.stack(masks, axis=-1).astype(bool)


def box_mask(shape, y1, x1, y2, x2):
    m = np.zeros(shape, bool)
    m[y1:y2, x1:x2] = True
    return m


# Pixel IoU / Dice --------------------------------------------------------------------------
def test_pixel_iou_and_dice_hand_computed():
    t = box_mask((4, 4), 0, 0, 2, 2)          # 4 pixels
    p = box_mask((4, 4), 0, 0, 2, 3)          # 6 pixels, 4 shared
    assert metrics.pixel_iou(t, p) == pytest.approx(4 / 6)
    assert metrics.dice(t, p) == pytest.approx(2 * 4 / 10)
    # instances are merged into one foreground first
    assert metrics.pixel_iou(stack(t, t), stack(p)) == pytest.approx(4 / 6)


def test_pixel_metrics_empty_cases():
    empty = np.zeros((3, 3), bool)
    assert metrics.pixel_iou(empty, empty) == 1.0
    assert metrics.dice(empty, empty) == 1.0
    assert metrics.pixel_iou(empty, box_mask((3, 3), 0, 0, 1, 1)) == 0.0


# DSB2018 score --------------------------------------------------------------------------
def test_dsb_perfect_and_disjoint():
    a = box_mask((10, 10), 0, 0, 4, 4)
    b = box_mask((10, 10), 5, 5, 9, 9)
    assert metrics.dsb_image_score(stack(a, b), stack(b, a)) == 1.0
    assert metrics.dsb_image_score(stack(a), stack(b)) == 0.0   # TP 0, FP 1, FN 1


def test_dsb_hand_computed_partial_overlap():
    # truth 10x10 block, prediction 10x8 inside it: IoU = 80/100 = 0.8
    t = box_mask((20, 20), 0, 0, 10, 10)
    p = box_mask((20, 20), 0, 0, 10, 8)
    extra = box_mask((20, 20), 15, 15, 18, 18)  # a false positive
    # IoU > t holds for t in 0.50..0.75 (6 thresholds): precision 1/(1+1+0) = 0.5 there,
    # 0 for t in 0.80..0.95 (0.8 is not > 0.8): 0/(0+2+1).
    expected = (6 * 0.5 + 4 * 0.0) / 10
    assert metrics.dsb_image_score(stack(t), stack(p, extra)) == pytest.approx(expected)


def test_dsb_label_score_hand_computed_and_as_masks():
    """The label-image score: the partial-overlap case above (0.3), numbering gaps ignored,
    and the masks' score on random label images."""
    t = np.zeros((20, 20), np.uint16)
    t[0:10, 0:10] = 7                            # one true object, numbered 7
    p = np.zeros((20, 20), np.uint16)
    p[0:10, 0:8] = 2                             # IoU 0.8
    p[15:18, 15:18] = 5                          # a false positive
    assert metrics.dsb_label_score(t, p) == pytest.approx((6 * 0.5 + 4 * 0.0) / 10)
    assert metrics.dsb_label_score(t, np.zeros_like(p)) == 0.0
    assert metrics.dsb_label_score(np.zeros_like(t), np.zeros_like(p)) == 1.0
    rng = np.random.RandomState(0)
    true = rng.randint(0, 6, (30, 30))
    pred = np.where(rng.rand(30, 30) < 0.2, rng.randint(0, 6, (30, 30)), true)
    masks = [(labels[..., None] == np.arange(1, 6)) for labels in (true, pred)]
    assert metrics.dsb_label_score(true, pred) == \
        pytest.approx(metrics.dsb_image_score(*masks))
    np.testing.assert_allclose(metrics.label_iou_matrix(true, pred),
                               metrics.mask_iou_matrix(*masks))
    with pytest.raises(ValueError, match="different sizes"):
        metrics.label_iou_matrix(true, pred[:5])


def test_dsb_true_positives_per_threshold():
    t = box_mask((20, 20), 0, 0, 10, 10)
    p = box_mask((20, 20), 0, 0, 10, 8)         # IoU 0.8 with t
    extra = box_mask((20, 20), 15, 15, 18, 18)
    tp = metrics.dsb_true_positives(stack(t), stack(p, extra))
    np.testing.assert_array_equal(tp, [1, 1, 1, 1, 1, 1, 0, 0, 0, 0])
    # the precisions are TP / (N + M - TP) from the same counts
    np.testing.assert_allclose(metrics.dsb_precisions(stack(t), stack(p, extra)),
                               tp / (1 + 2 - tp))
    # one true object, two identical predictions: one TP at every threshold
    np.testing.assert_array_equal(metrics.dsb_true_positives(stack(t), stack(t, t)), [1] * 10)
    assert metrics.dsb_true_positives(stack(t), np.zeros((20, 20, 0), bool)).sum() == 0


def test_dsb_iou_exactly_at_threshold_is_not_a_match():
    t = box_mask((1, 4), 0, 0, 1, 4)
    p = box_mask((1, 4), 0, 0, 1, 2)       # IoU exactly 0.5
    precisions = metrics.dsb_precisions(stack(t), stack(p))
    assert np.all(precisions == 0.0)      # 0.5 is not > 0.5
    p3 = box_mask((1, 4), 0, 0, 1, 3)      # IoU 0.75: matches at 0.50..0.70 only
    precisions = metrics.dsb_precisions(stack(t), stack(p3))
    np.testing.assert_allclose(precisions, [1, 1, 1, 1, 1, 0, 0, 0, 0, 0])


def test_dsb_no_predictions_no_truth():
    shape = (5, 5)
    none = np.zeros(shape + (0,), bool)
    some = stack(box_mask(shape, 0, 0, 2, 2))
    assert metrics.dsb_image_score(none, none) == 1.0
    assert metrics.dsb_image_score(some, none) == 0.0
    assert metrics.dsb_image_score(none, some) == 0.0
    assert metrics.dsb_score([some, some], [some, none]) == pytest.approx(0.5)


def test_dsb_duplicate_predictions_count_once():
    t = box_mask((10, 10), 0, 0, 6, 6)
    # two identical predictions: one TP and one FP at every threshold -> 1/2
    assert metrics.dsb_image_score(stack(t), stack(t, t)) == pytest.approx(0.5)


# VOC-style AP (Matterport) ------------------------------------------------------------------
def test_compute_ap_hand_computed():
    shape = (20, 20)
    g1, g2 = box_mask(shape, 0, 0, 5, 5), box_mask(shape, 10, 10, 15, 15)
    fp = box_mask(shape, 0, 10, 4, 14)
    gt_masks, pred_masks = stack(g1, g2), stack(g1, fp, g2)
    scores = np.array([0.9, 0.8, 0.7])
    ones = np.ones(3, np.int32)
    ap, precisions, recalls, _ = metrics.compute_ap(
        None, np.ones(2, np.int32), gt_masks, None, ones, scores, pred_masks)
    # ranked: TP, FP, TP -> precision 1, 1/2, 2/3 at recall 0.5, 0.5, 1
    # interpolated AP = 0.5 * 1 + 0.5 * 2/3
    assert ap == pytest.approx(0.5 + 0.5 * 2 / 3)
    ap_all_right = metrics.compute_ap(None, np.ones(2, np.int32), gt_masks, None,
                                      ones[:2], scores[:2], stack(g1, g2))[0]
    assert ap_all_right == pytest.approx(1.0)
    r = metrics.compute_ap_range(None, np.ones(2, np.int32), gt_masks, None, ones, scores,
                                 pred_masks)
    assert r == pytest.approx(0.5 + 0.5 * 2 / 3)   # exact masks: same at every threshold


def test_compute_ap_empty_cases():
    shape = (5, 5)
    none = np.zeros(shape + (0,), bool)
    one = stack(box_mask(shape, 0, 0, 2, 2))
    c = np.ones(1, np.int32)
    assert metrics.compute_ap(None, [], none, None, [], [], none)[0] == 1.0
    assert metrics.compute_ap(None, [], none, None, c, [0.9], one)[0] == 0.0
    assert metrics.compute_ap(None, c, one, None, [], [], none)[0] == 0.0


def test_compute_recall_boxes():
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]])
    pred = np.array([[0, 0, 10, 9]])    # IoU 0.9 with the first
    recall, ids = metrics.compute_recall(pred, gt, 0.5)
    assert recall == 0.5 and list(ids) == [0]


# COCO ---------------------------------------------------------------------------------------
def test_coco_perfect_and_missing():
    shape = (32, 32)
    a, b = box_mask(shape, 2, 2, 12, 12), box_mask(shape, 16, 16, 28, 28)
    perfect = metrics.coco_evaluate([stack(a, b)], [stack(a, b)], [np.array([0.9, 0.8])])
    assert perfect["segm"]["ap"] == pytest.approx(1.0)
    assert perfect["bbox"]["ap50"] == pytest.approx(1.0)
    half = metrics.coco_evaluate([stack(a, b)], [stack(a)], [np.array([0.9])])
    assert half["segm"]["ap50"] == pytest.approx(0.5, abs=0.01)   # recall stops at 1/2
    nothing = metrics.coco_evaluate([stack(a)], [np.zeros(shape + (0,), bool)], [np.zeros(0)])
    assert nothing["segm"] == {"ap": 0.0, "ap50": 0.0, "ap75": 0.0}


# RLE and submissions ------------------------------------------------------------------------
def test_rle_hand_computed_column_major_one_based():
    m = np.array([[0, 1, 0],
                  [1, 1, 0],
                  [0, 1, 1]], bool)
    # column-major order: col0 = 0,1,0; col1 = 1,1,1; col2 = 0,0,1 -> pixels 2, 4-6, 9
    assert metrics.rle_encode(m) == "2 1 4 3 9 1"
    np.testing.assert_array_equal(metrics.rle_decode("2 1 4 3 9 1", (3, 3)), m)
    assert metrics.rle_encode(np.zeros((2, 2), bool)) == ""


def test_rle_round_trip_random():
    rng = np.random.RandomState(0)
    m = rng.rand(37, 23) > 0.6
    np.testing.assert_array_equal(metrics.rle_decode(metrics.rle_encode(m), m.shape), m)


def test_rle_decode_rejects_bad_input():
    with pytest.raises(ValueError, match="odd"):
        metrics.rle_decode("1 2 3", (3, 3))
    with pytest.raises(ValueError, match="outside"):
        metrics.rle_decode("8 5", (3, 3))


def test_mask_to_rle_removes_overlaps_by_score(tmp_path):
    shape = (6, 6)
    low = box_mask(shape, 0, 0, 4, 4)
    high = box_mask(shape, 2, 2, 6, 6)
    rows = metrics.mask_to_rle("img", stack(low, high), scores=np.array([0.2, 0.9]))
    decoded = [metrics.rle_decode(r, shape) for _, r in rows]
    assert len(decoded) == 2
    np.testing.assert_array_equal(decoded[0], high)             # highest score first, whole
    np.testing.assert_array_equal(decoded[1], low & ~high)      # loses the shared pixels
    assert not (decoded[0] & decoded[1]).any()
    # an image without detections still gets a line
    empty_rows = metrics.mask_to_rle("empty", np.zeros(shape + (0,), bool))
    path = metrics.write_submission(str(tmp_path / "sub.csv"), rows + empty_rows)
    text = open(path).read().splitlines()
    assert text[0] == "ImageId,EncodedPixels" and text[-1] == "empty,"
    assert metrics.read_submission(path) == {"img": [r for _, r in rows], "empty": []}


def test_remove_overlaps_drops_fully_covered():
    a = box_mask((4, 4), 0, 0, 4, 4)
    b = box_mask((4, 4), 1, 1, 2, 2)
    clean, kept = metrics.remove_overlaps(stack(a, b), np.array([0.9, 0.1]))
    assert clean.shape[-1] == 1 and list(kept) == [0]


def test_dsb_breakdown_hand_computed():
    """benchmarks/dsb_breakdown.py: per-threshold curves and the per-size table."""
    bd = load_benchmark("dsb_breakdown")
    shape = (30, 30)
    t1 = box_mask(shape, 0, 0, 10, 10)                   # 100 px
    t2 = box_mask(shape, 20, 20, 25, 25)                 # 25 px
    p1 = box_mask(shape, 0, 0, 10, 8)                    # IoU 0.8 with t1
    p2 = t2.copy()                                       # exact, but below the confidence
    p3 = box_mask(shape, 12, 0, 15, 3)                   # a confident false positive
    a = bd.image_record(stack(t1, t2), stack(p1, p2, p3), np.array([0.9, 0.3, 0.8]), 0.7)
    np.testing.assert_array_equal(a["tp"], [1] * 6 + [0] * 4)
    assert (a["true"], a["predicted"]) == (2, 2)
    np.testing.assert_allclose(a["best_iou"], [0.8, 0.0])
    np.testing.assert_allclose(a["best_iou_any"], [0.8, 1.0])
    empty = bd.image_record(np.zeros(shape + (0,), bool), np.zeros(shape + (0,), bool),
                            np.zeros(0), 0.7)
    curves = bd.threshold_curves([a, empty])     # the empty image scores 1 everywhere
    np.testing.assert_allclose(curves["score"], [(1 / 3 + 1) / 2] * 6 + [0.5] * 4)
    np.testing.assert_allclose(curves["precision"], [0.75] * 6 + [0.5] * 4)
    np.testing.assert_allclose(curves["recall"], [0.75] * 6 + [0.5] * 4)
    small, medium = bd.size_table([a, empty])
    assert small == {"area_px": "<60", "true": 1, "found": 0.0, "only_below_confidence": 1.0,
                     "found_iou_0.75": 0.0, "median_iou_found": None}
    assert medium["area_px"] == "60-150" and medium["true"] == 1 and medium["found"] == 1.0
    assert medium["found_iou_0.75"] == 1.0 and medium["median_iou_found"] == pytest.approx(0.8)
    report = bd.breakdown({"fluorescence": [a], "histology": [empty]})
    assert report["all"]["images"] == 2
    assert report["fluorescence"]["dsb_score"] == pytest.approx(6 / 3 / 10)


def test_dsb_breakdown_stage_recall_hand_computed():
    """With proposals and detection boxes, each true nucleus's best box IoU at the RPN and
    at the scored detections, and the per-size shares above 0.5 / 0.7."""
    bd = load_benchmark("dsb_breakdown")
    shape = (30, 30)
    t1 = box_mask(shape, 0, 0, 10, 10)                   # box [0, 0, 10, 10], 100 px
    t2 = box_mask(shape, 20, 20, 25, 25)                 # box [20, 20, 25, 25], 25 px
    proposals = np.array([[0, 0, 10, 6], [20, 20, 25, 25]])   # IoU 0.6 with t1; exact on t2
    boxes = np.array([[0, 0, 10, 8], [20, 20, 25, 25]])       # IoU 0.8; exact but unconfident
    masks = stack(box_mask(shape, 0, 0, 10, 8), t2)
    r = bd.image_record(stack(t1, t2), masks, np.array([0.9, 0.3]), 0.7, proposals, boxes)
    np.testing.assert_allclose(r["proposal_iou"], [0.6, 1.0])
    np.testing.assert_allclose(r["box_iou"], [0.8, 0.0])
    small, medium = bd.size_table([r])
    assert (small["proposal_box_0.5"], small["proposal_box_0.7"]) == (1.0, 1.0)
    assert (small["detection_box_0.5"], small["detection_box_0.7"]) == (0.0, 0.0)
    assert (medium["proposal_box_0.5"], medium["proposal_box_0.7"]) == (1.0, 0.0)
    assert (medium["detection_box_0.5"], medium["detection_box_0.7"]) == (1.0, 1.0)
    assert "classified_background" not in medium
    # The box head's verdicts: t1's only proposal at IoU > 0.5 (0.6) is called background,
    # a proposal it keeps has IoU 0.4 with t1 (too far to count); t2's exact one is kept.
    with_far = np.concatenate([proposals, [[0, 0, 10, 4]]])
    r = bd.image_record(stack(t1, t2), masks, np.array([0.9, 0.3]), 0.7, with_far, boxes,
                        proposal_kept=[False, True, True])
    assert r["classified_background"].tolist() == [True, False]
    small, medium = bd.size_table([r])
    assert (small["classified_background"], medium["classified_background"]) == (0.0, 1.0)
    # Proposals come back from the molded image: a x2 image padded by 4 px on top.
    window = (4, 0, 24, 20)                              # a 10 x 10 image molded to 28 x 20
    normalised = bd.norm_boxes(np.array([[4, 0, 14, 10], [0, 0, 0, 0]]), (28, 20))
    normalised[1] = 0                                    # a padding row
    np.testing.assert_array_equal(bd.proposals_in_image(normalised, (28, 20), window, (10, 10)),
                                  [[0, 0, 5, 5]])


def test_threshold_sweep_hand_computed():
    """benchmarks/threshold_sweep.py: the DSB score at each (confidence, mask threshold) pair
    from one set of detections, and the best pair over images of two kinds."""
    sweep = load_benchmark("threshold_sweep")
    shape = (30, 30)
    t1, t2 = box_mask(shape, 0, 0, 10, 10), box_mask(shape, 20, 20, 25, 25)
    # At mask threshold 0.5 the first detection covers 80 of t1's 100 px (IoU 0.8); at 0.3
    # its mask grows to t1 exactly. The second is exact at both, scored 0.6.
    detections = {0.5: ([0.9, 0.6], stack(box_mask(shape, 0, 0, 10, 8), t2)),
                  0.3: ([0.9, 0.6], stack(t1, t2))}
    one = sweep.grid_scores(stack(t1, t2), detections, [0.5, 0.7])
    # Both kept: 2 TP up to IoU 0.75; at 0.8-0.95 1 TP, 1 FP, 1 FN -> 1/3.
    assert one[(0.5, 0.5)] == pytest.approx((6 + 4 / 3) / 10)
    assert one[(0.7, 0.5)] == pytest.approx(6 * 0.5 / 10)   # 1 TP, 1 FN up to 0.75, then 0
    assert one[(0.5, 0.3)] == pytest.approx(1.0)
    assert one[(0.7, 0.3)] == pytest.approx(0.5)
    # An image without nuclei and one false positive scored 0.6: 0 if kept, 1 if not.
    fp = {t: ([0.6], stack(box_mask(shape, 0, 0, 3, 3))) for t in (0.5, 0.3)}
    empty = sweep.grid_scores(np.zeros(shape + (0,), bool), fp, [0.5, 0.7])
    assert empty == {(0.5, 0.5): 0.0, (0.7, 0.5): 1.0, (0.5, 0.3): 0.0, (0.7, 0.3): 1.0}
    # Thresholds may keep different detections (the covered-share rule works on the pasted
    # masks): at 0.3 only the second detection is left, so t1 is missed there.
    fewer = sweep.grid_scores(stack(t1, t2), {0.5: detections[0.5], 0.3: ([0.6], stack(t2))},
                              [0.5])
    assert fewer[(0.5, 0.5)] == one[(0.5, 0.5)] and fewer[(0.5, 0.3)] == pytest.approx(0.5)
    table = sweep.summarise([("fluorescence", one), ("histology", empty)])
    assert table["all"][(0.7, 0.3)] == pytest.approx(0.75)
    assert table["all"][(0.5, 0.5)] == pytest.approx(((6 + 4 / 3) / 10) / 2)
    assert table["best"] == (0.7, 0.3)
    assert table["fluorescence"][(0.5, 0.3)] == 1.0 and table["histology"][(0.5, 0.3)] == 0.0


def test_tta_views_hand_computed():
    """benchmarks/tta_views.py: each variant's DSB score from its detections, the scales fused
    by votes, and the paired per-image summary."""
    views = load_benchmark("tta_views")
    shape = (30, 30)
    a, b = box_mask(shape, 0, 0, 10, 10), box_mask(shape, 20, 20, 25, 25)

    def result(*masks):
        masks = stack(*masks)
        return {"rois": np.zeros((masks.shape[-1], 4), np.int32),
                "class_ids": np.ones(masks.shape[-1], np.int32),
                "scores": np.linspace(0.9, 0.8, masks.shape[-1]).astype(np.float32),
                "masks": masks}
    plain, half = result(a, b), result(a)
    scores = views.view_scores(stack(a, b), plain, {0.5: half}, flipped=plain)
    # the half-scale view misses b: 1 TP, 1 FN at every IoU threshold -> 1/2. Fused with the
    # plain view, b has one vote of two: gone when 2 must agree, kept when 1 may.
    assert scores == {"plain": 1.0, "x0.5": 0.5, "scales_2votes": 0.5, "scales_1vote": 1.0,
                      "flips": 1.0}
    assert "scales_2votes" not in views.view_scores(stack(a, b), plain, {})
    # A pooled result is scored under its min area's name, overlaps removed by score first:
    # the lower-scored copy of a loses all its pixels to the first and is dropped (1 TP, 1 FN).
    pooled = views.view_scores(stack(a, b), plain, {}, pooled={400: result(a, a)})
    assert pooled == {"plain": 1.0, "half_pool400": 0.5}

    rows = [{"kind": "fluorescence", "scores": {"plain": 0.5, "v": 0.7}},
            {"kind": "histology", "scores": {"plain": 0.6, "v": 0.5}}]
    summary = views.paired_summary(rows)
    assert summary["plain"]["diff"] == 0 and summary["plain"]["better"] == 0
    v = summary["v"]
    assert v["mean"] == pytest.approx(0.6) and v["diff"] == pytest.approx(0.05)
    assert v["se"] == pytest.approx(0.15)      # differences 0.2 and -0.1: sd 0.212 / sqrt(2)
    assert (v["better"], v["worse"]) == (1, 1)
    assert v["by_kind"] == pytest.approx({"fluorescence": 0.2, "histology": -0.1})

    # The unflipped view reuses the plain detections; only the flipped views are detected.
    calls = []

    def detect(images):
        calls.append(len(images))
        return [{"tag": "detected"} for _ in images]
    got = views.reusing_plain(detect, {"tag": "plain"}, ["h", "none", "hv"])(["x", "y", "z"])
    assert [r["tag"] for r in got] == ["detected", "plain", "detected"] and calls == [2]
    assert views.reusing_plain(detect, {"tag": "plain"}, ["none"])(["y"]) == [{"tag": "plain"}]
    assert calls == [2]
