"""Test-time flips: detections map back to the original frame and fuse by voting."""

import numpy as np
import pytest
import skimage.measure

from mrcnn.ops.boxes import extract_bboxes
from mrcnn.tta import detect_with_flips, fuse_detections, unflip_result


def _result(masks, scores):
    masks = np.asarray(masks, bool)
    return {"rois": extract_bboxes(masks), "class_ids": np.ones(masks.shape[-1], np.int32),
            "scores": np.asarray(scores, np.float32), "masks": masks}


def threshold_detector(images):
    """Connected components of bright pixels: a detector that commutes with flips."""
    out = []
    for image in images:
        labels = skimage.measure.label(image[..., 0] > 128)
        masks = labels[..., None] == np.arange(1, labels.max() + 1)
        out.append(_result(masks, np.linspace(0.9, 0.8, masks.shape[-1])))
    return out


def _image():
    image = np.zeros((40, 56, 3), np.uint8)
    image[3:9, 5:20] = 255      # top-left bar
    image[25:37, 40:44] = 255   # bottom-right bar
    image[15:18, 28:30] = 255   # small blob
    return image


def test_flips_map_back_to_the_original_frame():
    image = _image()
    fused = detect_with_flips(threshold_detector, image)
    single = threshold_detector([image])[0]
    key = lambda r: sorted(map(tuple, r["rois"].tolist()))   # noqa: E731
    assert key(fused) == key(single)
    assert sorted(m.sum() for m in np.moveaxis(fused["masks"], -1, 0)) == \
        sorted(m.sum() for m in np.moveaxis(single["masks"], -1, 0))
    # every object found in all 4 views: fused score = mean of the 4 view scores
    assert np.all(fused["scores"] > 0.79)


def test_unflip_boxes_are_exclusive_pixel_boxes():
    masks = np.zeros((10, 12, 1), bool)
    masks[1:4, 2:7, 0] = True
    r = unflip_result(_result(masks, [1.0]), vertical=True, horizontal=True)
    assert r["rois"].tolist() == [[6, 5, 9, 10]]
    assert r["rois"].tolist() == extract_bboxes(r["masks"]).tolist()


def test_detector_that_ignores_orientation_gets_no_votes():
    def fixed_corner(images):   # always "finds" the top-left corner, whatever the view
        out = []
        for image in images:
            masks = np.zeros(image.shape[:2] + (1,), bool)
            masks[:5, :5, 0] = True
            out.append(_result(masks, [0.95]))
        return out
    fused = detect_with_flips(fixed_corner, _image())
    assert fused["masks"].shape == (40, 56, 0)


def test_fuse_hand_computed_votes_scores_and_masks():
    def box(y1, x1, y2, x2):
        m = np.zeros((20, 20), bool)
        m[y1:y2, x1:x2] = True
        return m
    a = [box(2, 2, 8, 8), box(2, 3, 8, 9), box(3, 2, 9, 8), box(2, 2, 8, 8)]  # all views
    c = [box(12, 12, 18, 18), box(12, 12, 18, 18)]                            # 2 views
    lone = box(12, 2, 16, 6)                                                  # 1 view
    views = [_result(np.stack([a[0], c[0], lone], -1), [0.9, 0.8, 0.99]),
             _result(np.stack([a[1], c[1]], -1), [0.7, 0.6]),
             _result(np.stack([a[2]], -1), [0.8]),
             _result(np.stack([a[3]], -1), [0.6])]
    fused = fuse_detections(views)
    assert fused["scores"] == pytest.approx([(0.9 + 0.7 + 0.8 + 0.6) / 4, (0.8 + 0.6) / 4])
    votes = np.sum(a, axis=0)
    assert np.array_equal(fused["masks"][..., 0], votes >= 2)   # pixels of >= half the views
    assert np.array_equal(fused["masks"][..., 1], c[0])
    assert fused["rois"].tolist() == [[2, 2, 8, 8], [12, 12, 18, 18]]
    # all votes required: only the object every view found survives
    assert len(fuse_detections(views, min_votes=4)["scores"]) == 1
    # IoU > 0.9: the shifted copies of a no longer match, only its identical views 0 and 3 do
    strict = fuse_detections(views, iou_threshold=0.9)
    assert strict["scores"] == pytest.approx([(0.9 + 0.6) / 4, (0.8 + 0.6) / 4])


def test_fuse_empty_and_bad_views():
    none = _result(np.zeros((8, 8, 0), bool), [])
    assert fuse_detections([none, none])["masks"].shape == (8, 8, 0)
    with pytest.raises(ValueError, match="unknown test-time views"):
        detect_with_flips(threshold_detector, _image(), views=("none", "rot90"))
