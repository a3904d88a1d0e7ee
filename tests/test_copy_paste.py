"""COPY_PASTE_PROBABILITY: whole objects of another window of the same image pasted into a
crop's free space (mrcnn.data.copy_paste)."""

import numpy as np
import pytest

from mrcnn.data.copy_paste import paste_objects
from mrcnn.data.loader import load_image_gt
from tests.conftest import TinyConfig


def _square(shape, y1, x1, y2, x2):
    out = np.zeros(shape, bool)
    out[y1:y2, x1:x2] = True
    return out


def test_paste_objects_hand_built():
    """A 20 x 20 crop (grey 10) with one object at rows/cols 2-5; a source window (grey 200)
    with three: A (rows/cols 6-9) comes within the 2-pixel margin of the crop's object, B (rows
    and cols 12-15) lies in free space, C touches the window's right edge. Only B is pasted,
    with its 2-pixel rim: rows and cols 10-17 take the source's pixels."""
    shape = (20, 20)
    image = np.full(shape + (3,), 10, np.uint8)
    mask = _square(shape, 2, 2, 6, 6)[..., None]
    source = np.full(shape + (3,), 200, np.uint8)
    source_mask = np.stack([_square(shape, 6, 6, 10, 10), _square(shape, 12, 12, 16, 16),
                            _square(shape, 1, 16, 4, 20)], axis=-1)
    out, out_mask, out_ids = paste_objects(image, mask, [1], source, source_mask, [1, 2, 3],
                                           margin=2, rng=np.random.RandomState(0))
    assert out_mask.shape == (20, 20, 2)
    np.testing.assert_array_equal(out_ids, [1, 2])
    np.testing.assert_array_equal(out_mask[..., 0], mask[..., 0])
    np.testing.assert_array_equal(out_mask[..., 1], source_mask[..., 1])
    expected = np.full(shape, 10)
    expected[10:18, 10:18] = 200
    np.testing.assert_array_equal(out[..., 0], expected)
    assert (image == 10).all()              # the input is not modified


def test_paste_objects_brings_no_unlabelled_piece_of_a_neighbour():
    """Two source objects one pixel apart: whichever is pasted first, the other's pixels
    never arrive without its mask, and the two pasted footprints never overlap."""
    shape = (24, 24)
    image = np.zeros(shape + (1,), np.uint8)
    source = np.zeros(shape + (1,), np.uint8)
    source_mask = np.stack([_square(shape, 8, 6, 14, 11), _square(shape, 8, 12, 14, 17)],
                           axis=-1)
    source[source_mask[..., 0]] = 100
    source[source_mask[..., 1]] = 200
    pasted_counts = set()
    for seed in range(6):
        out, out_mask, ids = paste_objects(image, np.zeros(shape + (0,), bool), [], source,
                                           source_mask, [1, 1], margin=2,
                                           rng=np.random.RandomState(seed))
        labelled = out_mask.any(axis=-1)
        # every source object pixel that arrived is inside a pasted mask
        assert not ((out[..., 0] > 0) & ~labelled).any()
        pasted_counts.add(out_mask.shape[-1])
        assert ids.dtype == np.int32 and len(ids) == out_mask.shape[-1]
    # one object only: the second's footprint would overlap the first's rim
    assert pasted_counts == {1}


def test_paste_objects_rejects_windows_of_different_sizes():
    with pytest.raises(ValueError, match="differ in size"):
        paste_objects(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 0), bool), [],
                      np.zeros((9, 8, 3), np.uint8), np.zeros((9, 8, 0), bool), [])


def test_crops_gain_disjoint_whole_objects(synthetic_dataset):
    """Crop mode with COPY_PASTE_PROBABILITY = 1 on synthetic nuclei (64 px windows of the
    128 px images): more objects per crop than without it over the same 24 crops, every mask
    non-empty, no pixel in two masks."""
    counts = {}
    for probability in (0.0, 1.0):
        config = TinyConfig()
        config.IMAGE_RESIZE_MODE = "crop"
        config.IMAGE_MIN_DIM = config.IMAGE_MAX_DIM = 64
        config.USE_MINI_MASK = False
        config.COPY_PASTE_PROBABILITY = probability
        config.validate()
        rng = np.random.RandomState(0)
        total = 0
        for _ in range(4):
            for image_id in synthetic_dataset.image_ids:
                image, _, class_ids, boxes, masks = load_image_gt(synthetic_dataset, config,
                                                                  image_id, rng=rng)
                assert image.shape == (64, 64, 3) and masks.shape[:2] == (64, 64)
                assert len(class_ids) == len(boxes) == masks.shape[-1]
                assert masks.any(axis=(0, 1)).all()
                assert masks.sum(axis=-1).max(initial=0) <= 1
                total += len(class_ids)
        counts[probability] = total
    assert counts[1.0] > counts[0.0] * 1.1


@pytest.mark.parametrize("field,value", [("COPY_PASTE_PROBABILITY", 1.5),
                                         ("COPY_PASTE_PROBABILITY", -0.1),
                                         ("COPY_PASTE_MARGIN", -1),
                                         ("COPY_PASTE_MARGIN", 1.5)])
def test_copy_paste_settings_are_validated(field, value):
    config = TinyConfig()
    setattr(config, field, value)
    with pytest.raises(ValueError, match=field):
        config.validate()
