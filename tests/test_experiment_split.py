"""benchmarks/experiment_split.py: whole experiments held out, as symbolic links."""

import json
import os

import numpy as np
import pytest
import skimage.io

from tests.conftest import load_benchmark


def write_image(root, image_id, image, nucleus_area):
    """One DSB-layout image folder with one square nucleus of about ``nucleus_area`` px."""
    os.makedirs(os.path.join(root, image_id, "images"))
    os.makedirs(os.path.join(root, image_id, "masks"))
    skimage.io.imsave(os.path.join(root, image_id, "images", image_id + ".png"), image,
                      check_contrast=False)
    side = int(round(np.sqrt(nucleus_area)))
    mask = np.zeros(image.shape[:2], np.uint8)
    mask[2:2 + side, 2:2 + side] = 255
    skimage.io.imsave(os.path.join(root, image_id, "masks", "m0.png"), mask,
                      check_contrast=False)


def grey(rng, height, width):
    """A dark grey RGB image (equal channels): fluorescence to image_kind."""
    return np.repeat(rng.randint(0, 40, (height, width, 1)), 3, axis=2).astype(np.uint8)


def test_kmeans_finds_two_separated_groups():
    split = load_benchmark("experiment_split")
    points = np.array([[0.0, 0.1], [0.1, 0.0], [0.05, 0.05], [5.0, 5.1], [5.1, 5.0]])
    labels = split.kmeans(points, 2)
    assert len(set(labels[:3])) == 1 and len(set(labels[3:])) == 1 and labels[0] != labels[3]


def test_held_out_takes_whole_experiments_up_to_the_share():
    split = load_benchmark("experiment_split")
    experiments = {f"a{i}": "fluo-A" for i in range(6)}
    experiments.update({f"b{i}": "fluo-B" for i in range(3)})
    experiments.update({f"c{i}": "fluo-C" for i in range(1)})
    kinds = {i: "fluorescence" for i in experiments}
    # share 0.2 of 10 images: A (6 > 2 * 0.2 * 10) is never held out; B and C can be
    chosen = split.held_out(experiments, kinds, 0.2)
    assert "fluo-A" not in chosen and chosen
    out = sum(1 for i in experiments if experiments[i] in chosen)
    assert out >= 2


def test_split_folders_hold_every_image_once_and_whole_experiments(tmp_path):
    split = load_benchmark("experiment_split")
    source = tmp_path / "data" / "stage1_train"
    rng = np.random.RandomState(0)
    for i in range(6):       # dark grey 32 x 32 fluorescence, small nuclei
        write_image(str(source), f"f{i}", grey(rng, 32, 32), 16)
    for i in range(3):       # dark grey 40 x 48: another experiment (another size)
        write_image(str(source), f"g{i}", grey(rng, 40, 48), 64)
    for i in range(4):       # stained colour 36 x 36
        image = np.zeros((36, 36, 3), np.uint8) + np.array([200, 120, 190], np.uint8)
        write_image(str(source), f"h{i}", image, 36)
    out = tmp_path / "xsplit"
    split.main(["--dataset", str(tmp_path / "data"), "--out", str(out), "--fraction", "0.3"])

    record = json.load(open(out / "experiments.json"))
    assert set(record) == {f"f{i}" for i in range(6)} | {f"g{i}" for i in range(3)} | {
        f"h{i}" for i in range(4)}
    assert {record[f"h{i}"]["kind"] for i in range(4)} == {"histology"}
    assert {record[f"f{i}"]["kind"] for i in range(6)} == {"fluorescence"}
    assert record["f0"]["experiment"] != record["g0"]["experiment"]   # sizes differ
    train = set(os.listdir(out / "experiment_train"))
    test = set(os.listdir(out / "experiment_test"))
    assert train | test == set(record) and not train & test and test
    for image_id in test:
        assert record[image_id]["held_out"]
        # every image of a held-out experiment is held out
        same = {i for i in record if record[i]["experiment"] == record[image_id]["experiment"]}
        assert same <= test
        link = out / "experiment_test" / image_id
        assert os.path.islink(link) and os.path.exists(link / "images" / (image_id + ".png"))
    # the only histology experiment has all 4 histology images, more than twice 0.3 of them
    assert not {f"h{i}" for i in range(4)} & test
    # a second run writes the same folders (stale links removed first)
    split.main(["--dataset", str(tmp_path / "data"), "--out", str(out), "--fraction", "0.3"])
    assert set(os.listdir(out / "experiment_test")) == test


def test_an_out_folder_holding_other_files_is_refused_untouched(tmp_path):
    split = load_benchmark("experiment_split")
    folder = tmp_path / "experiment_train"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="notes.txt"):
        split.link_folder(str(folder), [])
    assert (folder / "notes.txt").read_text() == "mine"


def test_an_image_without_masks_is_named(tmp_path):
    split = load_benchmark("experiment_split")
    folder = tmp_path / "data" / "stage1_train"
    write_image(str(folder), "f0", np.zeros((8, 8, 3), np.uint8), 4)
    os.makedirs(folder / "abc" / "images")
    skimage.io.imsave(str(folder / "abc" / "images" / "abc.png"),
                      np.zeros((8, 8, 3), np.uint8), check_contrast=False)
    with pytest.raises(SystemExit, match=r"no masks .*stage1_train/abc"):
        split.main(["--dataset", str(tmp_path / "data"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()   # nothing written
