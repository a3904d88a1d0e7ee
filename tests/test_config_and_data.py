"""Config validation and the data path: loading, mini-masks, augmentation, bad input,
batches."""

import collections
import logging

import numpy as np
import pytest

from mrcnn.config import Config
from mrcnn.data.augment import (apply_augmentation, colour_augmentation, default_augmentation,
                                make_augmentation, matterport_augmentation)
from mrcnn.data.dataset import Dataset
from mrcnn.data.generator import DataGenerator
from mrcnn.data.loader import load_image_gt
from mrcnn.ops.masks import expand_mask
from tests.conftest import TinyConfig


def test_computed_fields_and_display(capsys):
    config = TinyConfig()
    assert config.BATCH_SIZE == 2 and list(config.IMAGE_SHAPE) == [128, 128, 3]
    assert config.IMAGE_META_SIZE == 12 + 2
    # derived fields follow the fields they come from, whenever those change
    config.IMAGES_PER_GPU, config.IMAGE_MAX_DIM, config.NUM_CLASSES = 3, 192, 4
    assert config.BATCH_SIZE == 3 and list(config.IMAGE_SHAPE) == [192, 192, 3]
    assert config.IMAGE_META_SIZE == 12 + 4
    config.display()
    assert "RPN_CONV_CHANNELS" in capsys.readouterr().out


@pytest.mark.parametrize("field,value,message", [
    ("NAME", None, "NAME is not set"),
    ("NUM_CLASSES", 1, "counts the background"),
    ("IMAGE_RESIZE_MODE", "stretch", "IMAGE_RESIZE_MODE"),
    ("IMAGE_MAX_DIM", 100, "multiple of 64"),
    ("RPN_ANCHOR_SCALES", (8, 16), "one scale per level"),
    ("RPN_ANCHOR_SCALES_PER_OCTAVE", 0, "whole number >= 1"),
    ("RPN_ANCHOR_SCALES_PER_OCTAVE", 1.5, "whole number >= 1"),
    ("RPN_NEGATIVE_IOU", 0.8, "RPN_NEGATIVE_IOU=0.8 and RPN_POSITIVE_IOU=0.7"),   # crossed
    ("RPN_POSITIVE_IOU", 1.5, "0 < negative <= positive <= 1"),
    ("MASK_SHAPE", [56, 56], "twice MASK_POOL_SIZE"),
    ("LOSS_WEIGHTS", {"mask": 1.0}, "unknown keys"),
    ("DETECTION_MAX_INSTANCES", 1000, "POST_NMS_ROIS_INFERENCE"),
    ("DETECTION_BOX_REFINEMENTS", -1, "whole number >= 0"),
    ("DETECTION_BOX_REFINEMENTS", 0.5, "whole number >= 0"),
    ("BACKBONE_ZERO_INIT_RESIDUAL", "False", "null/true/false"),
    ("VALIDATION_EVERY_N_EPOCHS", 0, "whole number >= 1"),
    ("IMAGE_CACHE_MB", -1, "megabytes >= 0"),
    ("DETECTION_MIN_MASK_AREA", -1, "whole number >= 0 \\(pixels"),
    ("DETECTION_MIN_MASK_AREA", 2.5, "whole number >= 0 \\(pixels"),
    ("ROI_POSITIVE_SAMPLING", "balanced", "ROI_POSITIVE_SAMPLING='balanced'; use one of"),
])
def test_validate_rejects(field, value, message):
    config = TinyConfig()
    setattr(config, field, value)
    with pytest.raises(ValueError, match=message):
        config.validate()


def test_load_image_gt_mini_masks_match_instances(synthetic_dataset):
    config = TinyConfig()
    image, meta, class_ids, boxes, masks = load_image_gt(synthetic_dataset, config, 0)
    full, _ = synthetic_dataset.load_mask(0)
    assert image.shape == (128, 128, 3) and masks.shape == (28, 28, len(class_ids))
    assert len(class_ids) == full.shape[-1] and (class_ids == 1).all()
    expanded = expand_mask(boxes, masks, image.shape)
    for i in range(full.shape[-1]):
        inter = (expanded[..., i] & full[..., i]).sum()
        union = (expanded[..., i] | full[..., i]).sum()
        assert inter / union > 0.75


def test_albumentations_keeps_masks_aligned():
    import albumentations as A
    image = np.zeros((32, 32, 3), np.uint8)
    image[2:6, 20:30] = 255
    mask = np.zeros((32, 32, 1), bool)
    mask[2:6, 20:30] = True
    out_image, out_mask = apply_augmentation(A.HorizontalFlip(p=1.0), image, mask)
    assert (out_mask[..., 0] == (out_image[..., 0] == 255)).all()
    assert out_mask[2:6, 2:12].all()
    aug_image, aug_mask = apply_augmentation(default_augmentation(seed=1), image, mask)
    assert aug_mask.sum() == mask.sum() and aug_image.shape == image.shape


def test_matterport_augmentation_leaves_a_third_of_the_crops_unchanged_the_default_none():
    """Matterport's SomeOf((0, 2), ...): none, one or two of the five augmenters, each count a
    third of the time, so about a third of the crops come out unchanged (a little more: a
    rotation by 0 or 360 degrees changes nothing); the default's two change nearly every crop
    (a quarter turn and a flip can cancel out)."""
    image = np.random.RandomState(0).randint(0, 256, (32, 32, 3)).astype(np.uint8)
    mask = np.zeros((32, 32, 1), bool)

    def unchanged(augment):
        return sum(np.array_equal(apply_augmentation(augment, image, mask)[0], image)
                   for _ in range(300))
    assert 0.25 * 300 < unchanged(matterport_augmentation(seed=3)) < 0.5 * 300
    assert unchanged(default_augmentation(seed=3)) < 0.1 * 300
    assert make_augmentation("matterport") is not None


def test_albumentations_moves_separate_and_overlapping_masks_alike():
    """Non-overlapping masks travel as one label image, overlapping ones as a list: both come
    back as the flipped masks, in their order."""
    import albumentations as A
    separate = np.zeros((40, 48, 3), bool)
    separate[2:9, 3:11, 0], separate[20:30, 30:47, 1], separate[31:39, 0:5, 2] = True, True, True
    overlapping = separate.copy()
    overlapping[5:25, 5:35, 1] = True                       # now covers part of mask 0
    image = np.zeros((40, 48, 3), np.uint8)
    for masks in (separate, overlapping):
        _, flipped = apply_augmentation(A.HorizontalFlip(p=1.0), image, masks)
        assert flipped.dtype == bool and (flipped == masks[:, ::-1]).all()


def test_colour_augmentation_moves_masks_with_the_image_and_changes_colours():
    # A red L-shaped nucleus on a dark background: every draw must keep the mask on the
    # nucleus (a dihedral copy of it, where the image differs most from the background), and
    # over 40 draws the colour step must invert some crops and reorder the channels of others.
    image = np.full((64, 64, 3), 10, np.uint8)
    mask = np.zeros((64, 64, 1), bool)
    mask[8:40, 8:24] = mask[32:40, 8:48] = True
    image[mask[..., 0]] = (220, 60, 30)
    dihedral = [np.rot90(m, k) for m in (mask[..., 0], mask[::-1, :, 0]) for k in range(4)]
    augment = colour_augmentation(seed=5)
    inverted = reordered = 0
    for _ in range(40):
        out, out_mask = apply_augmentation(augment, image, mask)
        assert any((out_mask[..., 0] == d).all() for d in dihedral)
        inside = out[out_mask[..., 0]].astype(float).mean(0)
        outside = out[~out_mask[..., 0]].astype(float).mean(0)
        assert np.abs(inside - outside).max() > 40          # the nucleus is still where the mask is
        inverted += outside.mean() > inside.mean()
        reordered += int(np.argmax(inside) != 0)
    assert inverted >= 2 and reordered >= 2
    assert make_augmentation("none") is None
    with pytest.raises(ValueError, match="unknown augmentation"):
        make_augmentation("fancy")


def test_callable_augmentation_and_shape_change_error():
    image, mask = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 2), bool)
    flipped = apply_augmentation(lambda i, m: (i[::-1], m[::-1]), image, mask)
    assert flipped[1].shape == (8, 8, 2)
    with pytest.raises(ValueError, match="changed the shapes"):
        apply_augmentation(lambda i, m: (i[:4], m[:4]), image, mask)



def test_imgaug_augmenter_without_imgaug_fails_clearly():
    try:
        import imgaug  # noqa: F401
        pytest.skip("imgaug imports here; the clear-error path cannot be exercised")
    except Exception:
        pass

    class ImgaugLikeAugmenter:  # the duck type apply_augmentation treats as imgaug
        def to_deterministic(self):
            return self

        def augment_image(self, image, hooks=None):
            return image

    image, mask = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 1), bool)
    with pytest.raises(RuntimeError, match="imgaug cannot be imported.*albumentations"):
        apply_augmentation(ImgaugLikeAugmenter(), image, mask)
    with pytest.raises(ValueError, match="neither an albumentations"):
        apply_augmentation(42, image, mask)

class _FilesDataset(Dataset):
    def __init__(self, paths, mask_shape=None):
        super().__init__()
        self.add_class("cells", 1, "cell")
        for p in paths:
            self.add_image("cells", image_id=str(p), path=str(p))
        self.mask_shape = mask_shape
        self.prepare()

    def load_mask(self, image_id):
        shape = self.mask_shape or self.load_image(image_id).shape[:2]
        mask = np.zeros(tuple(shape) + (1,), bool)
        mask[5:15, 5:15] = True
        return mask, np.array([1], np.int32)


def _write_png(path, array):
    import skimage.io
    skimage.io.imsave(str(path), array, check_contrast=False)
    return path


def test_bad_input_errors_name_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="corrupt.png"):
        _FilesDataset([corrupt]).load_image(0)
    with pytest.raises(ValueError, match="not found.*missing.png"):
        _FilesDataset([tmp_path / "missing.png"]).load_image(0)
    good = _write_png(tmp_path / "good.png", np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match="good.png.*mask size"):
        load_image_gt(_FilesDataset([good], mask_shape=(32, 32)), TinyConfig(), 0)
    with pytest.raises(ValueError, match="no images"):
        DataGenerator(_FilesDataset([]), TinyConfig())


def test_grayscale_rgba_16bit_images_load(tmp_path):
    gray = _write_png(tmp_path / "gray.png", np.full((20, 20), 100, np.uint8))
    rgba = _write_png(tmp_path / "rgba.png", np.full((20, 20, 4), 50, np.uint8))
    deep = _write_png(tmp_path / "deep.png", np.linspace(0, 4000, 400).reshape(20, 20)
                      .astype(np.uint16))
    ds = _FilesDataset([gray, rgba, deep])
    for i in range(3):
        image = ds.load_image(i)
        assert image.shape == (20, 20, 3) and image.dtype == np.uint8
    assert ds.load_image(2).max() == 255


def test_generator_skips_a_bad_image_with_warning(tmp_path, caplog):
    good = _write_png(tmp_path / "good.png", np.zeros((64, 64, 3), np.uint8))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    ds = _FilesDataset([good, bad])
    generator = DataGenerator(ds, TinyConfig(), shuffle=False, steps=2, seed=0)
    with caplog.at_level(logging.WARNING):
        (batch,) = generator[0]
    assert "bad.png" in caplog.text
    assert batch["input_image"].shape == (2, 128, 128, 3)
    assert batch["input_gt_class_ids"][:, 0].tolist() == [1, 1]
    assert batch["input_gt_masks"].dtype == np.uint8
    assert (batch["input_rpn_match"] == 1).any()


def test_generator_batch_layout(synthetic_dataset):
    config = TinyConfig()
    (batch,) = DataGenerator(synthetic_dataset, config, steps=1, seed=0)[0]
    a = batch["input_rpn_match"].shape[1]
    assert a == 3 * sum((128 // s) ** 2 for s in (4, 8, 16, 32, 64))
    assert batch["input_rpn_bbox"].shape == (2, config.RPN_TRAIN_ANCHORS_PER_IMAGE, 4)
    assert batch["input_gt_boxes"].shape == (2, config.MAX_GT_INSTANCES, 4)
    assert batch["input_gt_masks"].shape == (2, 28, 28, config.MAX_GT_INSTANCES)


def test_generator_image_cache_reads_each_image_once_with_the_same_batches(synthetic_dataset,
                                                                         monkeypatch):
    """Cached, uncached and a cache with room for one image give the same batches, also
    under an augmenter that writes into the image; the cached generator reads each image once
    over two epochs, the others again."""
    reads = collections.Counter()
    load_image = type(synthetic_dataset).load_image

    def counted(self, image_id):
        reads[image_id] += 1
        return load_image(self, image_id)

    monkeypatch.setattr(type(synthetic_dataset), "load_image", counted)

    def in_place_flip(image, masks):         # an augmenter that writes into its input
        image[:] = image[::-1].copy()
        return image, masks[::-1]

    image_mb = 128 * 128 * 3 / 2 ** 20
    generators = {}
    for name, megabytes in (("cached", 1024), ("uncached", 0), ("one image", 1.5 * image_mb)):
        config = TinyConfig()
        config.IMAGE_CACHE_MB = megabytes
        config.IMAGE_RESIZE_MODE = "crop"     # the 128 px window of a 128 px image: a view
        generators[name] = DataGenerator(synthetic_dataset, config, steps=3, seed=0,
                                         augmentation=in_place_flip)
    counts = {name: 0 for name in generators}
    for _ in range(2):                        # 3 batches of 2: every one of the 6 images
        for index in range(3):
            batches = {}
            for name, generator in generators.items():
                before = sum(reads.values())
                (batches[name],) = generator[index]
                counts[name] += sum(reads.values()) - before
            for key, value in batches["cached"].items():
                np.testing.assert_array_equal(value, batches["uncached"][key])
                np.testing.assert_array_equal(value, batches["one image"][key])
        for generator in generators.values():
            generator.on_epoch_end()
    assert counts == {"cached": 6, "uncached": 12, "one image": 11}


def test_dataset_class_maps():
    ds = Dataset()
    ds.add_class("coco", 1, "person")
    ds.add_class("nucleus", 1, "nucleus")
    ds.add_image("nucleus", image_id="a", path=None)
    ds.prepare()
    assert ds.class_names == ["BG", "person", "nucleus"]
    assert ds.map_source_class_id("nucleus.1") == 2
    assert ds.source_class_ids["nucleus"] == [0, 2]
    assert isinstance(Config, type)


def test_mask_recall_hand_computed():
    from mrcnn.metrics import mask_iou_matrix, mask_recall
    true = np.zeros((4, 4, 2), bool)
    true[:2, :2, 0] = True            # 4 px
    true[2:, 2:, 1] = True            # 4 px
    pred = np.zeros((4, 4, 1), bool)
    pred[:2, :1, 0] = True            # 2 px inside the first: IoU 0.5, not > 0.5
    np.testing.assert_allclose(mask_iou_matrix(true, pred), [[0.5], [0.0]])
    assert mask_recall(true, pred)[:2] == (0, 2)
    pred[:2, :2, 0] = True
    assert mask_recall(true, pred)[:2] == (1, 2)
    assert mask_recall(true, np.zeros((4, 4, 0), bool))[:2] == (0, 2)
