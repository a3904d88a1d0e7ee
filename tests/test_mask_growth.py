"""DETECTION_MASK_INTENSITY_BAND: the pixels of a box whose mask probability is unsure are
decided by the image's intensity (the object's side of the Otsu split over the grown box)."""

import numpy as np
import pytest

from mrcnn.inference import Detector
from mrcnn.ops.boxes import norm_boxes
from mrcnn.ops.image import is_colour
from mrcnn.ops.masks import follow_intensity, grey_levels, otsu_threshold
from tests.conftest import TinyConfig


def _disc(shape, cy, cx, radius):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2


def test_otsu_threshold_hand_computed():
    # Two values: every split after the first bin of [0, 10] separates them perfectly, and
    # the first such bin wins: its centre is 10 / 256 / 2.
    assert otsu_threshold([0, 0, 0, 10, 10]) == pytest.approx(10 / 512)
    # Three clusters 0 / 1 / 9 (two of each): splitting {0, 1} from {9} gives w0 w1 (m0 - m1)^2
    # = 4 * 2 * 8.5^2 = 578, above {0} | {1, 9}: 2 * 4 * 5^2 = 200.
    t = otsu_threshold([0, 0, 1, 1, 9, 9])
    assert 1 < t < 9
    assert otsu_threshold(np.full(7, 3.0)) is None


def test_otsu_threshold_matches_scikit_image():
    filters = pytest.importorskip("skimage.filters")
    rng = np.random.RandomState(0)
    for _ in range(5):
        values = np.concatenate([rng.normal(50, 10, 300), rng.normal(150, 20, 100)])
        assert otsu_threshold(values) == pytest.approx(filters.threshold_otsu(values))


def _bright_nucleus(dark_object=False):
    """A 30 x 30 image with a disc of radius 6 at (15, 15); the detection's box is the whole
    image, the confident mask a disc of radius 3, the unsure pixels (probability above the
    floor) a disc of radius 9."""
    shape = (30, 30)
    nucleus = _disc(shape, 15, 15, 6)
    intensity = np.where(nucleus, 200.0, 20.0).astype(np.float32)
    if dark_object:
        intensity = 255.0 - intensity
    return nucleus, intensity, _disc(shape, 15, 15, 3), _disc(shape, 15, 15, 9)


@pytest.mark.parametrize("dark_object", [False, True])
def test_unsure_pixels_on_the_objects_side_join(dark_object):
    nucleus, intensity, inside, unsure = _bright_nucleus(dark_object)
    box = (0, 0, 30, 30)
    grown = follow_intensity(inside, inside, unsure, intensity, box, margin=10)
    np.testing.assert_array_equal(grown, nucleus)          # radius 3 grown to the disc of 6
    # Only possible pixels join: with those of radius 4, radius 4 is as far as it goes.
    limited = follow_intensity(inside, inside, _disc((30, 30), 15, 15, 4), intensity, box, 10)
    np.testing.assert_array_equal(limited, _disc((30, 30), 15, 15, 4))


@pytest.mark.parametrize("dark_object", [False, True])
def test_unsure_pixels_off_the_objects_side_leave(dark_object):
    """A mask of radius 8 around a nucleus of radius 6, sure only within radius 3: its unsure
    ring outside the nucleus goes; sure pixels stay whatever the image says."""
    nucleus, intensity, _, possible = _bright_nucleus(dark_object)
    inside, sure = _disc((30, 30), 15, 15, 8), _disc((30, 30), 15, 15, 3)
    box = (0, 0, 30, 30)
    np.testing.assert_array_equal(follow_intensity(inside, sure, possible, intensity, box, 10),
                                  nucleus)
    everything = follow_intensity(inside, inside, possible, intensity, box, 10)
    np.testing.assert_array_equal(everything, inside)      # all of radius 8 was sure


def test_empty_full_and_flat_masks_are_left_alone():
    nucleus, intensity, inside, unsure = _bright_nucleus()
    box, sure = (0, 0, 30, 30), _disc((30, 30), 15, 15, 1)
    empty = np.zeros_like(inside)
    assert not follow_intensity(empty, empty, unsure, intensity, box, 10).any()
    full = np.ones_like(inside)
    assert follow_intensity(full, sure, unsure, intensity, box, 10).all()
    flat = np.full((30, 30), 7.0, np.float32)
    np.testing.assert_array_equal(follow_intensity(inside, sure, unsure, flat, box, 10), inside)
    # A mask the image would erase (nothing sure, its possible pixels all on the dark side)
    # is kept as thresholded.
    ring = _disc((30, 30), 15, 15, 12) & ~_disc((30, 30), 15, 15, 9)
    assert not (ring & nucleus).any()
    np.testing.assert_array_equal(
        follow_intensity(ring | nucleus, empty, ring, intensity, box, 10), ring | nucleus)


def test_grey_levels_of_grey_images_only():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 58, 60, 62, 255   # alpha ignored
    np.testing.assert_allclose(grey_levels(rgba), np.full((2, 2), 60.0))     # deviation 4/3
    np.testing.assert_allclose(grey_levels(np.full((2, 2), 5, np.uint8)), 5.0)
    np.testing.assert_allclose(grey_levels(np.full((2, 2, 1), 9, np.uint8)), np.full((2, 2), 9))
    assert grey_levels(None) is None
    stained = rgba.copy()
    stained[..., 0], stained[..., 2] = 30, 90                 # deviation (30 + 0 + 30) / 3 = 20
    assert is_colour(stained) and grey_levels(stained) is None
    # 16-bit and float images are judged on their 8-bit view (as detect() molds them): a
    # near-grey 16-bit image is grey, a float image in [0, 1] with stain colours is not.
    deep = rgba[..., :3].astype(np.uint16) * 257
    deep[0, 0] = 65535                                        # the view scales by the maximum
    np.testing.assert_allclose(grey_levels(deep)[1:, 1:], 60.0, atol=0.5)
    assert grey_levels(stained[..., :3].astype(np.float32) / 255.0) is None


def test_colour_is_judged_like_the_savedmodel_judges_it():
    import tensorflow as tf
    from mrcnn.export import is_colour_tf
    rng = np.random.RandomState(0)
    grey = np.repeat(rng.randint(0, 255, (300, 300, 1)), 3, axis=-1)      # large: subsampled
    tinted = np.clip(grey + np.array([0, 3, 9]), 0, 255)                  # deviation 4
    pink = np.clip(grey * np.array([0.9, 0.6, 0.8]) + 40, 0, 255)          # stained-like
    speckled = grey.copy()
    speckled[1::4, 1::4, 0] = 0              # colour only off the every-4th grid: grey there
    for image, expected in ((grey, False), (tinted, False), (pink, True), (speckled, False)):
        assert is_colour(image) is expected
        assert bool(is_colour_tf(tf.constant(image, tf.float32)).numpy()) is expected


def _unmold(band, image, **given):
    """Detector.unmold_detections on one detection covering a 30 x 30 image whose 28 x 28 mask
    probability falls from 1 at the centre to 0 at radius 14 (mask-grid pixels); ``given``:
    ``intensity=`` instead of the image."""
    class Band(TinyConfig):
        DETECTION_MASK_THRESHOLD = 0.5
        DETECTION_MASK_INTENSITY_BAND = band
    config = Band()
    shape = (30, 30, 3)
    detections = np.zeros((config.DETECTION_MAX_INSTANCES, 6), np.float32)
    detections[0, :4] = norm_boxes(np.array([[0, 0, 30, 30]], np.float32), shape)
    detections[0, 4:] = 1, 0.9
    yy, xx = np.mgrid[:28, :28]
    radial = np.clip(1 - np.hypot(yy - 13.5, xx - 13.5) / 14, 0, 1).astype(np.float32)
    mrcnn_mask = np.zeros((config.DETECTION_MAX_INSTANCES, 28, 28, 2), np.float32)
    mrcnn_mask[0, ..., 1] = radial
    return Detector(config, keras_model=None).unmold_detections(
        detections, mrcnn_mask, shape, shape, np.array([0, 0, 30, 30]), image=image,
        **given)[3][..., 0]


def _grey_disc_image(radius):
    nucleus = _disc((30, 30), 14.5, 14.5, radius)
    return nucleus, np.repeat(np.where(nucleus, 180, 10).astype(np.uint8)[..., None], 3, axis=-1)


def test_unmold_lets_the_image_decide_the_unsure_pixels():
    nucleus, image = _grey_disc_image(10)
    plain = _unmold(None, image)                  # probability 0.5 reaches about radius 7.5
    assert 100 < plain.sum() < nucleus.sum() and not (plain & ~nucleus).any()
    grown = _unmold((0.2, 0.5), image)            # 0.2 reaches radius 12: the disc of 10 joins
    np.testing.assert_array_equal(grown, nucleus)
    small, image = _grey_disc_image(5)            # a nucleus smaller than the plain mask
    assert (plain & ~small).any()
    np.testing.assert_array_equal(_unmold((0.2, 0.8), image), small)   # 0.8: sure to radius 3
    np.testing.assert_array_equal(_unmold((0.2, 0.8), None), plain)     # no image: plain masks
    tinted = image.copy()
    tinted[..., 0] = 0                                           # a colour image keeps its masks
    np.testing.assert_array_equal(_unmold((0.2, 0.8), tinted), plain)
    # The grey levels measured once by the caller decide as the image does.
    np.testing.assert_array_equal(_unmold((0.2, 0.8), None, intensity=grey_levels(image)), small)
    np.testing.assert_array_equal(_unmold((0.2, 0.8), None, intensity=grey_levels(tinted)),
                                  plain)


@pytest.mark.parametrize("field,value", [("DETECTION_MASK_INTENSITY_BAND", (-0.1, 0.5)),
                                         ("DETECTION_MASK_INTENSITY_BAND", (0.6, 0.5)),
                                         ("DETECTION_MASK_INTENSITY_BAND", (0.2, 1.5)),
                                         ("DETECTION_MASK_INTENSITY_BAND", (0.2,)),
                                         ("DETECTION_MASK_INTENSITY_BAND", (True, 0.5)),
                                         ("DETECTION_MASK_INTENSITY_BAND", 0.25),
                                         ("DETECTION_MASK_INTENSITY_MARGIN", -1),
                                         ("DETECTION_MASK_INTENSITY_MARGIN", 2.5)])
def test_config_rejects_bad_band_settings(field, value):
    config = TinyConfig()
    setattr(config, field, value)
    with pytest.raises(ValueError, match=field):
        config.validate()


def test_config_accepts_band_settings():
    config = TinyConfig()
    for band in (None, (0, 1), [0.25, 0.6], (0.5, 0.5)):
        config.DETECTION_MASK_INTENSITY_BAND = band
        config.validate()
    config.DETECTION_MASK_INTENSITY_MARGIN = 0
    config.validate()


def test_savedmodel_twin_decides_the_same_pixels():
    """mrcnn.export.follow_intensity_tf (the SavedModel's) equals follow_intensity on noisy
    discs, bright and dark, with boxes at the image border, growing and shrinking."""
    import tensorflow as tf
    from mrcnn.export import follow_intensity_tf
    rng = np.random.RandomState(1)
    shape = (40, 40)
    for trial in range(8):
        cy, cx, r = rng.uniform(3, 37), rng.uniform(3, 37), rng.uniform(4, 9)
        nucleus = _disc(shape, cy, cx, r)
        intensity = (np.where(nucleus, 150.0, 40.0) + rng.normal(0, 25, shape)).astype(np.float32)
        if trial % 2:
            intensity = 255 - intensity
        y1, x1 = max(0, int(cy - r - 2)), max(0, int(cx - r - 2))
        y2, x2 = min(40, int(cy + r + 3)), min(40, int(cx + r + 3))
        scale = 0.6 if trial < 4 else 1.2                # masks too small, then too large
        inside = _disc(shape, cy, cx, r * scale)[y1:y2, x1:x2]
        sure = _disc(shape, cy, cx, r * scale * 0.5)[y1:y2, x1:x2]
        possible = _disc(shape, cy, cx, r * 1.3)[y1:y2, x1:x2]
        expected = follow_intensity(inside, sure, possible, intensity, (y1, x1, y2, x2), 5)
        got = follow_intensity_tf(tf.constant(inside), tf.constant(sure), tf.constant(possible),
                                  tf.constant(intensity), tf.constant([y1, x1, y2, x2]), 5)
        np.testing.assert_array_equal(got.numpy(), expected)
        assert (expected != inside).any()
    nucleus, intensity, _, _ = _bright_nucleus()           # the erasing case: kept, as above
    ring = _disc((30, 30), 15, 15, 12) & ~_disc((30, 30), 15, 15, 9)
    got = follow_intensity_tf(tf.constant(ring | nucleus), tf.zeros((30, 30), tf.bool),
                              tf.constant(ring), tf.constant(intensity),
                              tf.constant([0, 0, 30, 30]), 10)
    np.testing.assert_array_equal(got.numpy(), ring | nucleus)
