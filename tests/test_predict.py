"""predict: any folder of images (16-bit TIFF, RGBA PNG, grayscale JPEG, a corrupt file) to
label images, overlays, objects.csv and summary.csv; labels match detect(); reruns skip."""

import csv
import os

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from mrcnn import model as modellib
from mrcnn.data.synthetic import make_nuclei_image
from mrcnn.inference import Detector
from mrcnn.predict import find_images, label_image, predict_images, read_image
from mrcnn.tiling import predict_tiled, tile_spans
from samples.nucleus import train as nucleus_cli
from tests.conftest import ZeroConfidenceConfig


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Synthetic nuclei written as a 16-bit TIFF, a 3-channel TIFF (channels first), an RGBA
    PNG, a grayscale JPEG (in a sub-folder) and a corrupt PNG."""
    root = tmp_path_factory.mktemp("scans")
    images = [make_nuclei_image(np.random.RandomState(i), 96)[0] for i in range(4)]
    gray16 = (images[0][..., 0].astype(np.uint16) * 200)
    tifffile.imwrite(root / "a_16bit.tif", gray16)
    tifffile.imwrite(root / "b_3ch.tif", np.moveaxis(images[1], -1, 0))
    rgba = np.concatenate([images[2], np.full(images[2].shape[:2] + (1,), 255, np.uint8)], -1)
    iio.imwrite(root / "c_rgba.png", rgba)
    (root / "sub").mkdir()
    iio.imwrite(root / "sub" / "d_gray.jpg", images[3][..., 0], quality=95)
    (root / "e_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root, images


def test_readers_and_channels(image_folder, tmp_path):
    root, images = image_folder
    assert read_image(str(root / "a_16bit.tif")).dtype == np.uint16
    assert read_image(str(root / "b_3ch.tif")).shape == (96, 96, 3)
    assert read_image(str(root / "b_3ch.tif"), channels=[0]).shape == (96, 96)
    assert read_image(str(root / "c_rgba.png")).shape == (96, 96, 4)
    with pytest.raises(ValueError, match="e_corrupt.png"):
        read_image(str(root / "e_corrupt.png"))
    with pytest.raises(ValueError, match="has 3 channel.*--channels 5"):
        read_image(str(root / "b_3ch.tif"), channels=[5])
    five = tmp_path / "five.tif"
    tifffile.imwrite(five, np.zeros((5, 32, 32), np.uint16))
    with pytest.raises(ValueError, match="5 channels; choose the nuclear stain"):
        read_image(str(five))
    assert len(find_images(str(root))) == 4
    assert len(find_images(str(root), recursive=True)) == 5
    assert len(find_images(str(root / "*.tif"))) == 2
    with pytest.raises(FileNotFoundError, match="no image files"):
        find_images(str(tmp_path / "nothing"))


def test_label_image_resolves_overlaps_by_score():
    masks = np.zeros((6, 6, 2), bool)
    masks[0:4, 0:4, 0] = True
    masks[2:6, 2:6, 1] = True
    labels, scores = label_image(masks, np.array([0.6, 0.9]))
    assert labels.dtype == np.uint16 and list(scores) == [0.9, 0.6]
    assert (labels[2:6, 2:6] == 1).all()                       # the higher score wins
    assert (labels == 2).sum() == 16 - 4 and labels[0, 0] == 2 and labels[5, 0] == 0


def _read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_command_with_otsu_streams_skips_and_reruns(image_folder, tmp_path, capsys):
    root, _ = image_folder
    out = tmp_path / "out"
    argv = ["predict", "--input", str(root), "--recursive", "--model", "otsu", "--out",
            str(out)]
    nucleus_cli.main(argv)
    printed = capsys.readouterr().out
    assert "5 images: 4 segmented, 0 done before" in printed and "1 unreadable" in printed
    assert "e_corrupt.png" in printed
    summary = {r["image"]: r for r in _read_rows(out / "summary.csv")}
    assert summary["e_corrupt"]["status"].startswith("unreadable")
    objects = _read_rows(out / "objects.csv")
    for name in ("a_16bit", "b_3ch", "c_rgba", os.path.join("sub", "d_gray")):
        labels = tifffile.imread(out / "labels" / f"{name}.tif")
        assert labels.dtype == np.uint16 and labels.shape == (96, 96)
        rows = [r for r in objects if r["image"] == name]
        assert len(rows) == labels.max() == int(summary[name]["count"]) > 0
        for row in rows:   # measurements describe the label image
            assert int(row["area"]) == (labels == int(row["object_id"])).sum()
        assert (out / "overlays" / f"{name}.png").exists()
    # mean intensity is measured on the original 16-bit values
    raw = tifffile.imread(root / "a_16bit.tif")
    labels = tifffile.imread(out / "labels" / "a_16bit.tif")
    first = next(r for r in objects if r["image"] == "a_16bit" and r["object_id"] == "1")
    assert float(first["mean_intensity"]) == pytest.approx(raw[labels == 1].mean(), rel=1e-3)
    # a rerun skips what is done; --overwrite redoes it
    stamp = os.path.getmtime(out / "labels" / "b_3ch.tif")
    nucleus_cli.main(argv)
    assert "0 segmented, 4 done before" in capsys.readouterr().out
    assert os.path.getmtime(out / "labels" / "b_3ch.tif") == stamp
    assert len(_read_rows(out / "objects.csv")) == len(objects)
    nucleus_cli.main(argv + ["--overwrite", "--label-format", "png", "--coco"])
    assert "4 segmented" in capsys.readouterr().out
    assert (out / "labels" / "c_rgba.png").exists() and (out / "coco_results.json").exists()


def test_labels_match_detect(image_folder, tmp_path, trained_dir):
    """Through the Python function with a Mask R-CNN: every label is one of detect()'s masks
    (overlaps resolved by score), in score order."""
    root, images = image_folder
    class OneImage(ZeroConfidenceConfig):
        IMAGES_PER_GPU = 1
    model = modellib.MaskRCNN("inference", OneImage(), trained_dir)
    model.load_weights(model.find_last())
    out = tmp_path / "out"
    summary = predict_images(model, [str(root / "c_rgba.png")], str(out), progress=False)
    assert summary["done"] == 1 and not summary["failed"]
    labels = tifffile.imread(out / "labels" / "c_rgba.tif")
    expected = model.detect([images[2]])[0]
    want, want_scores = label_image(expected["masks"], expected["scores"])
    assert want.max() > 0
    np.testing.assert_array_equal(labels, want)
    scores = [float(r["score"]) for r in _read_rows(out / "objects.csv")]
    np.testing.assert_allclose(scores, np.round(want_scores[:len(scores)], 4), atol=1e-4)


class TiledConfig(ZeroConfidenceConfig):
    """Whole images padded to multiples of 64 at the rule's scale (x1.28 for a 75 px tile, x1
    for 192 px), stretched intensities, every detection slot kept and a small cap."""
    IMAGES_PER_GPU = 1
    IMAGE_RESIZE_MODE = "pad64"
    IMAGE_MIN_DIM = 96
    IMAGE_NORMALIZATION = "stretch"
    DETECTION_MAX_INSTANCES = 8


@pytest.fixture(scope="module")
def tiled_model(trained_dir):
    model = modellib.MaskRCNN("inference", TiledConfig(), trained_dir)
    model.load_weights(model.find_last())
    return model


def _mosaic(images):
    """A 192 x 192 RGB image of four 96 px ones, dimmed so the stretch matters."""
    top, bottom = np.concatenate(images[:2], axis=1), np.concatenate(images[2:4], axis=1)
    return (np.concatenate([top, bottom], axis=0)[..., :3] // 2).astype(np.uint8)


def test_tiles_are_detected_at_the_whole_images_scale_and_stretch(image_folder, tiled_model,
                                                                  monkeypatch):
    _, images = image_folder
    mosaic = _mosaic([np.asarray(i)[..., :3] for i in images])
    detector = tiled_model.detector
    normalized = detector.normalize(mosaic)
    assert detector.default_scale(mosaic.shape) == 1.0 and detector.default_scale((75, 75)) > 1
    calls = []
    original = detector.detect_at

    def recording(tiles, scales, verbose=0, normalized=False):
        calls.append((tiles[0].copy(), list(scales), normalized))
        return original(tiles, scales, verbose, normalized)
    monkeypatch.setattr(detector, "detect_at", recording)
    result = predict_tiled(tiled_model, mosaic, tile=80, overlap=16)
    assert result["tiles"] == len(calls) == 9 and result["labels"].shape == (192, 192)
    starts = [s for s, _, _, _ in tile_spans(192, 80, 16)]
    for n, (tile, scales, was_normalized) in enumerate(calls):
        y, x = starts[n // 3], starts[n % 3]
        assert scales == [1.0] and was_normalized and tile.shape == (75, 75, 3)
        np.testing.assert_array_equal(tile, normalized[y:y + 75, x:x + 75])
    assert result["labels"].max() == len(result["scores"]) > 8     # more than one call's cap
    calls.clear()       # with test-time flips: each tile's 4 views in one call, same scale
    flipped = predict_tiled(tiled_model, mosaic, tile=80, overlap=16, tta=True)
    assert len(calls) == 9 and all(scales == [1.0] * 4 for _, scales, _ in calls)
    assert flipped["labels"].shape == (192, 192) and flipped["tiles"] == 9


def test_normalized_detect_matches_detect(image_folder, tiled_model, caplog):
    """Detecting the image normalised beforehand gives detect()'s result; filling
    DETECTION_MAX_INSTANCES is warned about, once."""
    _, images = image_folder
    image = (np.asarray(images[1])[..., :3] // 2).astype(np.uint8)
    detector = Detector(tiled_model.config, tiled_model.keras_model)   # not warned before
    with caplog.at_level("WARNING", logger="mrcnn.inference"):
        want = detector.detect([image])[0]
        got = detector.detect_at([detector.normalize(image)], [None], normalized=True)[0]
    assert len(want["scores"]) == 8
    np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-5)
    np.testing.assert_array_equal(got["masks"], want["masks"])
    warnings = [r for r in caplog.records if "DETECTION_MAX_INSTANCES = 8" in r.getMessage()]
    assert len(warnings) == 1 and "tiles" in warnings[0].getMessage()


def test_one_tile_is_detect_and_predict_images_tiles(image_folder, tiled_model, tmp_path):
    root, images = image_folder
    result = predict_tiled(tiled_model, images[2], tile=128, overlap=32)
    detected = tiled_model.detect([images[2]])[0]
    want, want_scores = label_image(detected["masks"], detected["scores"])
    assert result["tiles"] == 1
    np.testing.assert_array_equal(result["labels"], want)
    np.testing.assert_allclose(result["scores"], want_scores, rtol=1e-6)
    mosaic_path = tmp_path / "mosaic.tif"
    tifffile.imwrite(mosaic_path, _mosaic([np.asarray(i)[..., :3] for i in images]))
    out = tmp_path / "out"
    summary = predict_images(tiled_model, [str(mosaic_path)], str(out), progress=False,
                             tile=80, tile_overlap=16, coco=True)
    labels = tifffile.imread(out / "labels" / "mosaic.tif")
    rows = _read_rows(out / "objects.csv")
    assert summary["done"] == 1 and labels.shape == (192, 192)
    assert len(rows) == labels.max() > 8
    assert [int(r["area"]) for r in rows] == [int((labels == k).sum())
                                              for k in range(1, labels.max() + 1)]
