"""DSB-layout nucleus data, COCO JSON data, crop-then-resize and the evaluation pipeline."""

import json
import os

import numpy as np
import pytest
import skimage.io

from mrcnn.config import Config
from mrcnn.data.coco import CocoDataset
from mrcnn.data.loader import crop_then_resize, load_image_gt
from mrcnn.data.synthetic import write_synthetic_dsb
from mrcnn.evaluation import evaluate_dataset

from samples.nucleus.cli_common import make_config, parse_overrides, select_fraction
from samples.nucleus.cli_eval import otsu_predictor
from samples.nucleus.nucleus import (NucleusDataset, image_kind, kind_of_file, pack_masks,
                                     set_kind_repeat_factors, split_ids)

SHARED_DSB = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "dsb2018")


class CropConfig(Config):
    """Matterport's nucleus crop mode at 64 px."""

    NAME = "crop"
    NUM_CLASSES = 2
    IMAGE_RESIZE_MODE = "crop"
    IMAGE_MIN_DIM = 64
    IMAGE_MIN_SCALE = 2.0


@pytest.fixture(scope="module")
def dsb_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("dsb"))
    write_synthetic_dsb(root, 12, size=96, seed=0)
    return root


def test_train_val_split_is_deterministic_disjoint_and_complete(dsb_dir):
    train = NucleusDataset().load_nucleus(dsb_dir, "train")
    val = NucleusDataset().load_nucleus(dsb_dir, "val")
    train_ids = {i["id"] for i in train.image_info}
    val_ids = {i["id"] for i in val.image_info}
    assert val_ids and not train_ids & val_ids and len(train_ids | val_ids) == 12
    again = {i["id"] for i in NucleusDataset().load_nucleus(dsb_dir, "val").image_info}
    assert again == val_ids


def test_nucleus_bad_input_errors(dsb_dir, tmp_path):
    with pytest.raises(ValueError, match="not found"):
        NucleusDataset().load_nucleus(str(tmp_path), "stage1_test")
    (tmp_path / "empty_subset").mkdir()
    with pytest.raises(ValueError, match="no images"):
        NucleusDataset().load_nucleus(str(tmp_path), "empty_subset")
    # an image whose masks folder exists but is empty
    folder = tmp_path / "broken" / "x1"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    skimage.io.imsave(str(folder / "images" / "x1.png"), np.zeros((8, 8), np.uint8),
                      check_contrast=False)
    ds = NucleusDataset().load_nucleus(str(tmp_path), "broken")
    ds.prepare()
    with pytest.raises(ValueError, match="masks folder is empty.*x1"):
        ds.load_mask(0)


def test_detection_only_folder_and_mask_cache(dsb_dir, tmp_path):
    folder = tmp_path / "stage1_test" / "t1" / "images"
    folder.mkdir(parents=True)
    skimage.io.imsave(str(folder / "t1.png"), np.zeros((8, 8, 4), np.uint8),
                      check_contrast=False)
    ds = NucleusDataset().load_nucleus(str(tmp_path), "stage1_test")
    ds.prepare()
    assert ds.load_mask(0)[0].shape[-1] == 0
    train = NucleusDataset().load_nucleus(dsb_dir, "stage1_train")
    train.prepare()
    first, ids = train.load_mask(0)
    cached, ids2 = train.load_mask(0)      # second call comes from the label cache
    np.testing.assert_array_equal(first, cached)
    np.testing.assert_array_equal(ids, ids2)


def test_nucleus_object_size_from_the_label_cache(dsb_dir):
    """The median nucleus diameter from the cached label image (bincount) equals the generic
    one from the expanded masks, before and after the cache is filled."""
    uncached = NucleusDataset(cache_masks=False).load_nucleus(dsb_dir, "stage1_train")
    cached = NucleusDataset().load_nucleus(dsb_dir, "stage1_train")
    uncached.prepare()
    cached.prepare()
    for image_id in uncached.image_ids[:4]:
        masks, _ = uncached.load_mask(image_id)
        areas = np.sort(masks.sum(axis=(0, 1)))
        expected = np.sqrt(4 * np.median(areas) / np.pi)
        assert uncached.object_size(image_id) == pytest.approx(expected)
        assert cached.object_size(image_id) == pytest.approx(expected)   # fills the cache
        cached._object_sizes.clear()
        assert image_id in cached._label_cache
        assert cached.object_size(image_id) == pytest.approx(expected)   # from the labels


def test_crop_then_resize_keeps_masks_aligned():
    rng = np.random.RandomState(0)
    image = np.zeros((50, 70, 3), np.uint8)
    masks = np.zeros((50, 70, 3), bool)
    masks[5:15, 5:15, 0] = masks[30:45, 40:60, 1] = masks[20:25, 60:68, 2] = True
    image[masks.any(-1)] = 200
    for _ in range(5):
        out, m, ids, window, scale = crop_then_resize(image, masks, np.array([1, 1, 1]), 64,
                                                      2.0, rng)
        assert out.shape == (64, 64, 3) and m.shape[:2] == (64, 64)
        assert len(ids) == m.shape[-1] and scale == pytest.approx(2.0)
        assert (out[m.any(-1)] > 100).mean() > 0.95  # mask pixels fall on bright pixels


def test_windowed_crop_equals_full_crop(dsb_dir):
    """Crops cut from the cached label image (NucleusDataset.load_mask_window) give exactly
    what cutting the full [H, W, N] masks gives, for the same random windows."""
    config = CropConfig()
    cached = NucleusDataset().load_nucleus(dsb_dir, "stage1_train")
    full = NucleusDataset(cache_masks=False).load_nucleus(dsb_dir, "stage1_train")
    cached.prepare()
    full.prepare()
    for image_id in cached.image_ids[:4]:
        assert cached.load_mask_window(image_id, 0, 0, 8, 8) is None  # not loaded yet
        load_image_gt(cached, config, image_id, rng=np.random.RandomState(0))
        assert cached.load_mask_window(image_id, 0, 0, 8, 8) is not None
        for seed in range(3):
            a = load_image_gt(cached, config, image_id, rng=np.random.RandomState(seed))
            b = load_image_gt(full, config, image_id, rng=np.random.RandomState(seed))
            assert a[2].size > 0 or seed  # some crops hold nuclei
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y)


def test_crop_of_image_without_nuclei(tmp_path):
    """A crop-mode image with no masks folder trains as a negative (it used to crash)."""
    folder = tmp_path / "stage1_train" / "empty" / "images"
    folder.mkdir(parents=True)
    skimage.io.imsave(str(folder / "empty.png"), np.full((90, 80, 3), 7, np.uint8),
                      check_contrast=False)
    ds = NucleusDataset().load_nucleus(str(tmp_path), "stage1_train")
    ds.prepare()
    for _ in range(2):  # the second call may use the label cache
        image, _, class_ids, bbox, mask = load_image_gt(ds, CropConfig(), 0,
                                                        rng=np.random.RandomState(0))
        assert image.shape == (64, 64, 3) and class_ids.shape == (0,)
        assert bbox.shape == (0, 4) and mask.shape[-1] == 0


def test_bad_mask_window_names_the_image(dsb_dir):
    class WrongWindow(NucleusDataset):
        def load_mask_window(self, image_id, y, x, height, width):
            return np.zeros((height + 3, width, 1), bool), np.ones([1], np.int32)

    ds = WrongWindow().load_nucleus(dsb_dir, "stage1_train")
    ds.prepare()
    with pytest.raises(ValueError, match=r"synthetic_.*\.png: load_mask_window returned"):
        load_image_gt(ds, CropConfig(), 0, rng=np.random.RandomState(0))


def test_coco_dataset_polygons_rle_and_crowd(tmp_path):
    from pycocotools import mask as mask_utils
    skimage.io.imsave(str(tmp_path / "a.png"), np.zeros((20, 30, 3), np.uint8),
                      check_contrast=False)
    square = np.zeros((20, 30), np.uint8)
    square[10:15, 20:28] = 1
    rle = mask_utils.encode(np.asfortranarray(square))
    rle["counts"] = rle["counts"].decode("ascii")
    data = {"images": [{"id": 7, "file_name": "a.png", "width": 30, "height": 20}],
            "categories": [{"id": 3, "name": "nucleus"}, {"id": 5, "name": "cell"}],
            "annotations": [
                {"id": 1, "image_id": 7, "category_id": 3, "iscrowd": 0,
                 "segmentation": [[2, 2, 9, 2, 9, 7, 2, 7]], "area": 35, "bbox": [2, 2, 7, 5]},
                {"id": 2, "image_id": 7, "category_id": 5, "iscrowd": 0,
                 "segmentation": rle, "area": 40, "bbox": [20, 10, 8, 5]},
                {"id": 3, "image_id": 7, "category_id": 3, "iscrowd": 1,
                 "segmentation": rle, "area": 40, "bbox": [20, 10, 8, 5]}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    ds = CocoDataset().load_coco(str(path))
    ds.prepare()
    assert ds.class_names == ["BG", "nucleus", "cell"]
    masks, class_ids = ds.load_mask(0)
    assert masks.shape == (20, 30, 2) and class_ids.tolist() == [1, 2]
    np.testing.assert_array_equal(masks[..., 1], square.astype(bool))
    assert masks[3:6, 3:8, 0].all() and not masks[10:, :, 0].any()
    assert ds.load_image(0).shape == (20, 30, 3)
    with pytest.raises(ValueError, match="not found"):
        CocoDataset().load_coco(str(tmp_path / "missing.json"))


def test_evaluate_dataset_with_otsu_on_synthetic(dsb_dir):
    ds = NucleusDataset().load_nucleus(dsb_dir, "stage1_train")
    ds.prepare()
    out = evaluate_dataset(ds, otsu_predictor(), list(ds.image_ids)[:4])
    for key in ("dsb_score", "ap", "ap50", "ap75", "iou", "dice", "voc_ap50",
                "seconds_per_image"):
        assert key in out
    assert out["images"] == 4 and len(out["per_image"]) == 4
    assert 0.0 < out["dsb_score"] <= 1.0 and out["iou"] > 0.3

    def perfect(image, _it=iter(list(ds.image_ids)[:4] * 2)):
        masks = ds.load_mask(next(_it))[0]
        return {"masks": masks, "scores": np.ones(masks.shape[-1])}
    best = evaluate_dataset(ds, perfect, list(ds.image_ids)[:4], warmup=0)
    assert best["dsb_score"] == pytest.approx(1.0) and best["ap"] == pytest.approx(1.0)


def test_with_exposure_scales_pixel_values_within_the_dtype():
    from mrcnn.evaluation import with_exposure
    seen = []

    def predict(image):
        seen.append(image)
        return {"masks": np.zeros(image.shape[:2] + (0,), bool), "scores": np.zeros(0)}
    predict.num_params = 7
    image = np.array([[0, 3, 100, 200]], np.uint8)[..., None].repeat(3, -1)
    halved, brighter = with_exposure(predict, 0.5), with_exposure(predict, 1.5)
    halved(image)
    brighter(image)
    with_exposure(predict, 0.5)(np.array([[60000, 9]], np.uint16))
    assert seen[0].dtype == np.uint8 and seen[0][0, :, 0].tolist() == [0, 2, 50, 100]
    assert seen[1][0, :, 0].tolist() == [0, 4, 150, 255]          # clipped, not wrapped
    assert seen[2].dtype == np.uint16 and seen[2][0].tolist() == [30000, 4]
    assert halved.num_params == 7


def test_with_blur_spreads_a_bright_pixel_as_a_gaussian_in_every_channel():
    """One 255 pixel in a dark uint8 RGB image, blurred with sigma 1: the centre keeps
    255 / (2 pi) = 40.6 -> 41 and each 4-neighbour 255 exp(-1/2) / (2 pi) = 24.6 -> 25 (computed
    by hand), every channel alike, the dtype kept; sigma 0 changes nothing."""
    from mrcnn.evaluation import with_blur
    seen = []

    def predict(image):
        seen.append(image)
        return {"masks": np.zeros(image.shape[:2] + (0,), bool), "scores": np.zeros(0)}
    predict.num_params = 5
    image = np.zeros((15, 15, 3), np.uint8)
    image[7, 7] = 255
    blurred = with_blur(predict, 1.0)
    blurred(image)
    with_blur(predict, 0.0)(image)
    out = seen[0]
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert out[7, 7].tolist() == [41, 41, 41]
    assert out[7, 8, 0] == out[6, 7, 1] == out[8, 7, 2] == 25
    assert abs(int(out[..., 0].sum()) - 255) <= 10            # the light is spread, not lost
    np.testing.assert_array_equal(seen[1], image)
    assert blurred.num_params == 5
    with pytest.raises(ValueError, match="sigma"):
        with_blur(predict, -1.0)


def test_scale_stains_recomposes_a_pixel_from_its_scaled_stain_amounts():
    """A white slide with a patch of 0.5 haematoxylin + 0.3 eosin (optical density, Ruifrok &
    Johnston's vectors): doubling the haematoxylin gives the colour of 1.0 + 0.3 computed by
    hand, the white stays white; grey and dark-background images are returned unchanged."""
    from mrcnn.evaluation import with_stain_scale
    from mrcnn.ops.image import STAIN_VECTORS, scale_stains

    def colour(h, e):
        return np.round(256.0 * np.exp(-(h * STAIN_VECTORS[0] + e * STAIN_VECTORS[1])) - 1.0)
    slide = np.full((20, 20, 3), 255, np.uint8)
    slide[:8] = colour(0.5, 0.3)                         # 40 % of the slide
    restained = scale_stains(slide, haematoxylin=2.0)
    np.testing.assert_allclose(restained[0, 0], colour(1.0, 0.3), atol=1.0)
    assert (restained[10:, 10:] == 255).all()
    assert not np.array_equal(scale_stains(slide, eosin=0.5)[0, 0], slide[0, 0])
    fluorescence = np.zeros((20, 20, 3), np.uint8)
    fluorescence[5:9, 5:9] = 200
    for unchanged in (fluorescence, slide[..., :1], 255 - fluorescence):
        assert scale_stains(unchanged, 2.0, 0.5) is unchanged
    with pytest.raises(ValueError, match="uint16"):
        scale_stains(slide.astype(np.uint16), 2.0)

    seen = []

    def predict(image):
        seen.append(image)
        return {"masks": np.zeros(image.shape[:2] + (0,), bool), "scores": np.zeros(0)}
    with_stain_scale(predict, 2.0, 1.0)(slide)
    np.testing.assert_array_equal(seen[0], restained)
    with pytest.raises(ValueError, match="positive"):
        with_stain_scale(predict, 0.0, 1.0)


def test_config_overrides_and_fraction(dsb_dir):
    overrides = parse_overrides(["image_min_scale=1", "BACKBONE=resnet18",
                                 "MEAN_PIXEL=[1, 2, 3]"])
    assert overrides == {"IMAGE_MIN_SCALE": 1, "BACKBONE": "resnet18", "MEAN_PIXEL": [1, 2, 3]}
    config = make_config(overrides)
    assert config.BACKBONE == "resnet18" and isinstance(config.MEAN_PIXEL, np.ndarray)
    inference = make_config({"IMAGE_MIN_DIM": 256}, inference=True)
    assert inference.IMAGE_RESIZE_MODE == "pad64"
    assert (inference.DETECTION_MIN_CONFIDENCE, inference.DETECTION_MASK_THRESHOLD) == (0.7, 0.45)
    assert make_config({"DETECTION_MASK_THRESHOLD": 0.5}).DETECTION_MASK_THRESHOLD == 0.5
    assert make_config({"DETECTION_MASK_THRESHOLD": 0.5},
                       inference=True).DETECTION_MASK_THRESHOLD == 0.5      # --set wins
    assert inference.DETECTION_MAX_COVERED_FRACTION == 0.2
    assert make_config({}).DETECTION_MAX_COVERED_FRACTION is None        # training: off
    assert inference.DETECTION_MIN_MASK_AREA == 20
    assert make_config({}).DETECTION_MIN_MASK_AREA == 0                  # training: off
    off = parse_overrides(["DETECTION_MIN_MASK_AREA=0"])
    assert make_config(off, inference=True).DETECTION_MIN_MASK_AREA == 0
    off = parse_overrides(["DETECTION_MAX_COVERED_FRACTION=null"])
    assert make_config(off, inference=True).DETECTION_MAX_COVERED_FRACTION is None
    assert tuple(inference.DETECTION_MASK_INTENSITY_BAND) == (0.25, 0.6)
    assert inference.DETECTION_MASK_INTENSITY_MARGIN == 10
    assert make_config({}).DETECTION_MASK_INTENSITY_BAND is None         # training: off
    off = parse_overrides(["DETECTION_MASK_INTENSITY_BAND=null"])
    assert make_config(off, inference=True).DETECTION_MASK_INTENSITY_BAND is None
    band = parse_overrides(["DETECTION_MASK_INTENSITY_BAND=[0.3,0.5]"])
    assert list(make_config(band, inference=True).DETECTION_MASK_INTENSITY_BAND) == [0.3, 0.5]
    with pytest.raises(ValueError, match="NO_SUCH"):
        parse_overrides(["NO_SUCH=1"])
    ds = NucleusDataset().load_nucleus(dsb_dir, "stage1_train")
    ds.prepare()
    half = select_fraction(ds, 0.5, seed=3)
    assert len(half.image_ids) == 6
    assert [i["id"] for i in half.image_info] == \
        [i["id"] for i in select_fraction(ds, 0.5, seed=3).image_info]


def test_kind_of_file_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    from samples.nucleus import nucleus
    reads = []
    real_read = nucleus.read_image_file
    monkeypatch.setattr(nucleus, "read_image_file", lambda p: reads.append(p) or real_read(p))
    path = str(tmp_path / "image.png")
    skimage.io.imsave(path, np.full((32, 32, 3), 10, np.uint8), check_contrast=False)
    assert kind_of_file(path) == kind_of_file(path) == "fluorescence"
    assert reads == [path]                              # the second call did not read it
    skimage.io.imsave(path, np.full((40, 40, 3), 220, np.uint8), check_contrast=False)
    assert kind_of_file(path) == "brightfield"        # rewritten: read again, not remembered
    with pytest.raises(ValueError, match="missing.png"):
        kind_of_file(str(tmp_path / "missing.png"))


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_DSB, "stage1_train")),
                    reason="real DSB2018 data not present")
def test_real_dsb_split_is_stratified():
    folder = os.path.join(SHARED_DSB, "stage1_train")
    ids = sorted(os.listdir(folder))
    train, val = split_ids(folder, ids)
    assert len(val) == pytest.approx(0.1 * len(ids), abs=5) and not set(train) & set(val)
    ds = NucleusDataset().load_nucleus(SHARED_DSB, "val")
    ds.prepare()
    masks, class_ids = ds.load_mask(0)
    assert masks.shape[:2] == ds.load_image(0).shape[:2] and len(class_ids) > 0


def test_repeat_factors_oversample_in_the_generator():
    from mrcnn.config import Config
    from mrcnn.data.dataset import Dataset
    from mrcnn.data.generator import DataGenerator
    ds = Dataset()
    ds.add_class("x", 1, "thing")
    for i, factor in enumerate([1.0, 1.0, 3.0, 1.5]):
        ds.add_image("x", image_id=i, path=f"{i}.png", repeat_factor=factor)
    ds.prepare()

    class Cfg(Config):
        NAME, NUM_CLASSES, IMAGES_PER_GPU = "t", 2, 1
    gen = DataGenerator(ds, Cfg(), shuffle=True, seed=0)
    seen = np.zeros(4)
    for _ in range(400):
        order = gen._make_order()
        counts = np.bincount(order, minlength=4)
        assert counts[0] == counts[1] == 1 and counts[2] == 3 and counts[3] in (1, 2)
        seen += counts
        gen.on_epoch_end()
    assert seen[3] / 400 == pytest.approx(1.5, abs=0.1)


def test_kind_repeat_factors(tmp_path):
    root = str(tmp_path)
    write_synthetic_dsb(root, 6, size=64, seed=0, kind="fluorescence")
    write_synthetic_dsb(root, 2, size=64, seed=100, kind="histology")
    ds = NucleusDataset().load_nucleus(root, "stage1_train")
    ds.prepare()
    table = set_kind_repeat_factors(ds)
    assert table == {"fluorescence": (6, 1.0),
                     "histology": (2, pytest.approx(np.sqrt(0.5 * 8 / 2)))}
    for info in ds.image_info:
        assert info["kind"] == image_kind(skimage.io.imread(info["path"]))
        assert info["repeat_factor"] == (1.0 if info["kind"] == "fluorescence" else np.sqrt(2))


def test_with_rescale_predicts_on_the_resized_image_and_returns_masks_at_its_size():
    from mrcnn.evaluation import with_rescale
    seen = []

    def predict(image):
        """One square 'nucleus' at rows/cols 10-19 of whatever image it is given."""
        seen.append(image.shape)
        masks = np.zeros(image.shape[:2] + (1,), bool)
        masks[10:20, 10:20, 0] = True
        return {"masks": masks, "scores": np.ones(1)}
    predict.num_params = 3
    image = np.zeros((40, 60, 3), np.uint8)
    result = with_rescale(predict, 0.5)(image)
    assert seen == [(20, 30, 3)]
    # rows 10-19 of the 20-row image are rows 20-39 of the original
    assert result["masks"].shape == (40, 60, 1)
    assert np.argwhere(result["masks"][..., 0]).min(0).tolist() == [20, 20]
    assert np.argwhere(result["masks"][..., 0]).max(0).tolist() == [39, 39]
    assert result["masks"].sum() == 400 and with_rescale(predict, 2.0).num_params == 3
    empty = with_rescale(lambda im: {"masks": np.zeros(im.shape[:2] + (0,), bool),
                                     "scores": np.zeros(0)}, 1.5)(image)
    assert empty["masks"].shape == (40, 60, 0)
    with pytest.raises(ValueError, match="positive"):
        with_rescale(predict, 0)


def test_label_cache_keeps_the_pixels_nuclei_share(tmp_path):
    """Overlapping masks (5 DSB2018 training images have a shared pixel or two) are cached
    too, losslessly: full masks, every window and the object size equal the files', including
    a nucleus lying wholly under another, which the label image alone cannot hold."""
    folder = tmp_path / "stage1_train" / "ov"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    skimage.io.imsave(str(folder / "images" / "ov.png"), np.full((20, 24, 3), 9, np.uint8),
                      check_contrast=False)
    masks = np.zeros((20, 24, 4), bool)
    masks[2:10, 2:10, 0] = True
    masks[8:14, 8:16, 1] = True          # shares a 2 x 2 corner with nucleus 0
    masks[4:6, 4:6, 2] = True            # wholly under nucleus 0
    masks[15:19, 18:23, 3] = True
    for k in range(masks.shape[-1]):
        skimage.io.imsave(str(folder / "masks" / f"m{k}.png"), masks[..., k].astype(np.uint8) * 255,
                          check_contrast=False)
    labels, shared = pack_masks(masks)
    assert labels[5, 5] == 1 and labels[9, 9] == 1 and labels[12, 12] == 2
    assert sorted(map(tuple, shared.tolist())) == sorted(
        [(r, c, 2) for r in (8, 9) for c in (8, 9)] + [(r, c, 3) for r in (4, 5) for c in (4, 5)])
    uncached = NucleusDataset(cache_masks=False).load_nucleus(str(tmp_path), "stage1_train")
    cached = NucleusDataset().load_nucleus(str(tmp_path), "stage1_train")
    for ds in (uncached, cached):
        ds.prepare()
    assert cached.load_mask_window(0, 0, 0, 20, 24) is None        # not read yet
    np.testing.assert_array_equal(cached.load_mask(0)[0], masks)   # read, fills the cache
    np.testing.assert_array_equal(cached.load_mask(0)[0], masks)   # from the cache
    for y, x, side in [(0, 0, 24), (3, 3, 4), (8, 8, 3), (9, 6, 5), (14, 17, 6), (0, 12, 6)]:
        window, class_ids = cached.load_mask_window(0, y, x, side, side)
        expected = masks[y:y + side, x:x + side]
        expected = expected[..., expected.any(axis=(0, 1))]
        np.testing.assert_array_equal(window, expected)
        assert len(class_ids) == expected.shape[-1]
    assert cached.object_size(0) == pytest.approx(uncached.object_size(0))
