"""Tiled prediction (mrcnn.tiling): spans, exactness against the whole image, the object cap,
and the label-image overlay."""

import numpy as np
import pytest
import skimage.measure

from mrcnn.data.synthetic import make_nuclei_image
from mrcnn.tiling import predict_tiled, tile_spans
from mrcnn.visualize import overlay_instances, overlay_labels


def test_tile_spans_hand_computed():
    # 2048 px in tiles <= 1024 overlapping >= 128: 3 tiles of ceil((2048 + 2 * 128) / 3) = 768,
    # starting at 0, 640, 1280; core bounds at the middles of the overlaps, 704 and 1344.
    assert tile_spans(2048, 1024, 128) == [(0, 768, 0, 704), (640, 1408, 704, 1344),
                                           (1280, 2048, 1344, 2048)]
    assert tile_spans(1000, 1024, 128) == [(0, 1000, 0, 1000)]
    with pytest.raises(ValueError, match="larger than the overlap"):
        tile_spans(500, 64, 64)


@pytest.mark.parametrize("length", [129, 300, 511, 777, 2049])
def test_tile_spans_cover_with_cores_that_partition(length):
    tile, overlap = 128, 40
    spans = tile_spans(length, tile, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == length
    assert spans[0][2] == 0 and spans[-1][3] == length
    sizes = {stop - start for start, stop, _, _ in spans}
    assert len(sizes) == 1 and sizes.pop() <= tile
    for (s0, e0, _, c0), (s1, e1, c1, _) in zip(spans, spans[1:]):
        assert c0 == c1                                   # cores meet without gap or overlap
        assert e0 - s1 >= overlap - 1                     # tiles overlap (rounding: 1 px)
        assert c1 - s1 >= overlap // 2 - 1 and e0 - c0 >= overlap // 2 - 1


def _threshold_predictor(cap=None):
    """Connected components of grey > 60 (a fixed threshold, so a tile sees what the whole
    image sees), the smallest scored highest (so a piece of an object cut by a tile's edge
    outscores the whole object); ``cap`` keeps only the best, like DETECTION_MAX_INSTANCES."""
    calls = []

    def predict(image):
        calls.append(image.shape[:2])
        labels = skimage.measure.label(image[..., 0] > 60)
        ids = np.arange(1, labels.max() + 1)
        masks = labels[..., None] == ids
        scores = 1.0 / masks.sum(axis=(0, 1)).astype(np.float32)
        order = np.argsort(-scores, kind="stable")[:cap]
        return {"masks": masks[..., order], "scores": scores[order]}
    predict.calls = calls
    return predict


def _objects(labels):
    """The label image as a set of objects (each a frozenset of flat pixel indices)."""
    flat = labels.ravel()
    return {frozenset(np.flatnonzero(flat == k)) for k in np.unique(flat) if k}


def test_tiles_give_the_whole_image_objects():
    """Objects smaller than the overlap come out exactly as from one whole-image call, none
    cut and none twice, though most tiles' edges cross some object."""
    rng = np.random.RandomState(0)
    image, masks, _ = make_nuclei_image(rng, (300, 420), num_nuclei=60, kind="fluorescence",
                                        min_radius=4, max_radius=8)
    predict = _threshold_predictor()
    whole = skimage.measure.label(image[..., 0] > 60)
    result = predict_tiled(predict, image, tile=128, overlap=48)
    assert result["tiles"] == len(predict.calls) == 4 * 5 and max(predict.calls) <= (128, 128)
    assert result["labels"].shape == (300, 420) and result["labels"].dtype == np.uint16
    assert _objects(result["labels"]) == _objects(whole) and len(_objects(whole)) > 30
    # label k is the k-th highest score (1 / area here), and rois hold each object
    assert np.all(np.diff(result["scores"]) <= 0)
    for k in (1, len(result["scores"])):
        ys, xs = np.nonzero(result["labels"] == k)
        assert result["scores"][k - 1] == pytest.approx(1.0 / len(ys))
        y1, x1, y2, x2 = result["rois"][k - 1]
        assert ys.min() >= y1 and ys.max() < y2 and xs.min() >= x1 and xs.max() < x2


def test_tiles_lift_the_object_cap():
    rng = np.random.RandomState(1)
    image, _, _ = make_nuclei_image(rng, (256, 256), num_nuclei=40, kind="fluorescence",
                                    min_radius=4, max_radius=7)
    whole_count = len(_objects(skimage.measure.label(image[..., 0] > 60)))
    capped = predict_tiled(_threshold_predictor(cap=10), image, tile=512, overlap=48)
    tiled = predict_tiled(_threshold_predictor(cap=10), image, tile=96, overlap=40)
    assert capped["tiles"] == 1 and capped["labels"].max() == 10 < whole_count
    assert tiled["labels"].max() > 10 + 10


def test_duplicates_across_tiles_are_dropped():
    """An object on the boundary of two tiles' cores, reported by both with boxes a row apart
    (centres 101.5 and 100.5, the boundary at 100), is kept once, with the higher score."""
    image = np.zeros((200, 200, 3), np.uint8)
    spans = tile_spans(200, 128, 48)
    assert spans == [(0, 124, 0, 100), (76, 200, 100, 200)]
    calls = []

    def predict(tile):
        row, col = divmod(len(calls), len(spans))
        calls.append((row, col))
        masks = np.zeros(tile.shape[:2] + (1,), bool)
        if col == 1:                                   # the object lies in the left tiles only
            return {"masks": masks[..., :0], "scores": np.zeros(0)}
        y = (96 if row == 0 else 95) - spans[row][0]  # the upper tile sees it a row lower
        masks[y:y + 11, 20:31, 0] = True
        return {"masks": masks, "scores": np.array([0.9 if row == 0 else 0.8])}
    result = predict_tiled(predict, image, tile=128, overlap=48)
    assert result["tiles"] == len(calls) == 4 and result["labels"].max() == 1
    assert result["scores"][0] == pytest.approx(0.9)
    assert (result["labels"] == 1).sum() == 11 * 11 and result["labels"][96:107, 20:31].all()


def test_overlay_labels_matches_overlay_instances():
    rng = np.random.RandomState(2)
    image, masks, _ = make_nuclei_image(rng, 96, num_nuclei=8)
    labels = np.zeros(image.shape[:2], np.uint16)
    for i in range(masks.shape[-1]):
        labels[masks[..., i]] = i + 1
    want = overlay_instances(image, masks)
    got = overlay_labels(image, labels)
    assert got.dtype == np.uint8 and got.shape == image.shape
    assert np.abs(got.astype(int) - want).max() <= 1
    assert (got != image).any() and (got[labels == 0] == image[labels == 0]).all()
    np.testing.assert_array_equal(overlay_labels(image, np.zeros_like(labels)), image)


def test_bench_tiling_builds_a_field_with_its_truth():
    from mrcnn.data.synthetic import SyntheticNucleiDataset
    from tests.conftest import load_benchmark
    bench = load_benchmark("bench_tiling")
    dataset = SyntheticNucleiDataset().load_synthetic(3, size=256, seed=4)
    dataset.prepare()
    image, truth = bench.build_mosaic(dataset, list(dataset.image_ids), 512)
    assert image.shape == (512, 512, 3) and truth.shape == (512, 512)
    counts = [dataset.load_mask(i)[0].shape[-1] for i in dataset.image_ids]
    order = np.random.RandomState(0).permutation(list(dataset.image_ids))
    fourth = order[3 % 3]                      # 4 blocks from 3 images: the first comes again
    assert truth.max() == sum(counts) + counts[fourth] == len(np.unique(truth)) - 1
    np.testing.assert_array_equal(image[256:, 256:], dataset.load_image(fourth)[..., :3])
