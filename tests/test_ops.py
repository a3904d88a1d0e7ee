"""Box, anchor, image and mask ops: hand-computed cases and NumPy/TF parity."""

import numpy as np
import pytest
import tensorflow as tf

from mrcnn.ops import anchors as anchor_ops
from mrcnn.ops import boxes as box_ops
from mrcnn.ops.image import (compose_image_meta, normalize_image, parse_image_meta,
                             parse_image_meta_graph, resize_image, resize_mask)
from mrcnn.ops.masks import expand_mask, minimize_mask, unmold_mask


def test_overlaps_hand_computed():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30], [0, 0, 5, 10]])
    iou = box_ops.compute_overlaps(a, b)[0]
    np.testing.assert_allclose(iou, [1.0, 25 / 175, 0.0, 0.5])


def test_numpy_tf_parity_boxes():
    rng = np.random.RandomState(0)
    y1x1 = rng.uniform(0, 50, (20, 2))
    boxes = np.concatenate([y1x1, y1x1 + rng.uniform(2, 30, (20, 2))], 1).astype(np.float32)
    gt = boxes + rng.uniform(-2, 2, boxes.shape).astype(np.float32)
    np.testing.assert_allclose(box_ops.tf_overlaps(boxes, gt).numpy(),
                               box_ops.compute_overlaps(boxes, gt), atol=1e-5)
    deltas = box_ops.box_refinement(boxes, gt)
    np.testing.assert_allclose(box_ops.tf_box_refinement(boxes, gt).numpy(), deltas, atol=1e-5)
    np.testing.assert_allclose(box_ops.apply_box_deltas(boxes, deltas), gt, atol=1e-3)
    np.testing.assert_allclose(box_ops.tf_apply_box_deltas(boxes, deltas).numpy(), gt, atol=1e-3)
    # the twins agree on the deltas an untrained head emits too (huge log-scales are clipped)
    wild = rng.uniform(-3, 3, (20, 4)).astype(np.float32) * np.array([1, 1, 10, 10], np.float32)
    numpy_boxes = box_ops.apply_box_deltas(boxes, wild)
    assert np.isfinite(numpy_boxes).all()
    np.testing.assert_allclose(box_ops.tf_apply_box_deltas(boxes, wild).numpy(), numpy_boxes,
                               rtol=1e-4, atol=1e-2)


def test_clip_and_norm_roundtrip():
    boxes = np.array([[-0.2, 0.1, 0.5, 1.4]], np.float32)
    np.testing.assert_allclose(box_ops.tf_clip_boxes(tf.constant(boxes), [0., 0., 1., 1.]).numpy(),
                               [[0, 0.1, 0.5, 1.0]])
    pixel = np.array([[3, 4, 20, 30]])
    np.testing.assert_array_equal(box_ops.denorm_boxes(box_ops.norm_boxes(pixel, (64, 64)),
                                                       (64, 64)), pixel)
    np.testing.assert_allclose(
        box_ops.tf_norm_boxes(pixel.astype(np.float32), [64, 64]).numpy(),
        box_ops.norm_boxes(pixel, (64, 64)), atol=1e-6)


def test_extract_bboxes():
    mask = np.zeros((10, 10, 2), bool)
    mask[2:5, 3:7, 0] = True
    np.testing.assert_array_equal(box_ops.extract_bboxes(mask), [[2, 3, 5, 7], [0, 0, 0, 0]])
    assert box_ops.extract_bboxes(np.zeros((4, 4, 0), bool)).shape == (0, 4)


def test_extract_bboxes_matches_the_first_and_last_rows_and_columns():
    """The vectorised boxes equal each mask's first and last occupied row and column (+1 at
    the end), for random sparse and dense masks, uint8 as well as bool, and single pixels at
    the image's corners."""
    rng = np.random.RandomState(0)
    for _ in range(100):
        h, w, n = rng.randint(1, 30), rng.randint(1, 30), rng.randint(1, 6)
        mask = rng.rand(h, w, n) > rng.choice([0.5, 0.97, 1.0])
        for dtype in (bool, np.uint8):
            boxes = box_ops.extract_bboxes(mask.astype(dtype))
            assert boxes.dtype == np.int32
            for i in range(n):
                ys, xs = np.nonzero(mask[..., i])
                expected = [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1] if len(ys) else [0] * 4
                np.testing.assert_array_equal(boxes[i], expected)
    corners = np.zeros((5, 7, 2), bool)
    corners[0, 0, 0] = corners[4, 6, 1] = True
    np.testing.assert_array_equal(box_ops.extract_bboxes(corners), [[0, 0, 1, 1], [4, 6, 5, 7]])


def test_anchors_numpy_tf_parity_and_layout():
    strides = [4, 8, 16, 32, 64]
    shapes = anchor_ops.backbone_shapes((128, 192), strides)
    np.testing.assert_array_equal(shapes[:, 0], [32, 16, 8, 4, 2])
    np.testing.assert_array_equal(shapes[:, 1], [48, 24, 12, 6, 3])
    a = anchor_ops.generate_pyramid_anchors((8, 16, 32, 64, 128), [0.5, 1, 2], shapes, strides, 1)
    assert a.shape == (3 * shapes.prod(axis=1).sum(), 4)
    t = anchor_ops.tf_generate_pyramid_anchors(tf.constant([128, 192]), (8, 16, 32, 64, 128),
                                               [0.5, 1, 2], strides, 1).numpy()
    np.testing.assert_allclose(t, a, atol=1e-4)
    # First cell, ratio 1: a square of side 8 centred at (0, 0).
    np.testing.assert_allclose(a[1], [-4, -4, 4, 4])


def test_two_anchor_scales_per_octave_layout_and_parity():
    """Octave scales (1, sqrt 2): each cell has side x1 then side x sqrt(2), ratios inner, so
    the first three anchors are Matterport's; NumPy and TF agree."""
    strides = [4, 8, 16, 32, 64]
    octave = anchor_ops.octave_scales(2)
    np.testing.assert_allclose(octave, [1.0, 2 ** 0.5])
    shapes = anchor_ops.backbone_shapes((128, 192), strides)
    one = anchor_ops.generate_pyramid_anchors((8, 16, 32, 64, 128), [0.5, 1, 2], shapes,
                                              strides, 1)
    two = anchor_ops.generate_pyramid_anchors((8, 16, 32, 64, 128), [0.5, 1, 2], shapes,
                                              strides, 1, octave)
    assert two.shape == (2 * len(one), 4)
    np.testing.assert_allclose(two[:3], one[:3])
    half = 4 * 2 ** 0.5
    np.testing.assert_allclose(two[4], [-half, -half, half, half], atol=1e-5)
    # The second cell of P2 (x = 4) starts at anchor 6.
    np.testing.assert_allclose(two[7], [-4, 0, 4, 8])
    t = anchor_ops.tf_generate_pyramid_anchors(tf.constant([128, 192]), (8, 16, 32, 64, 128),
                                               [0.5, 1, 2], strides, 1, octave).numpy()
    np.testing.assert_allclose(t, two, atol=1e-4)


def test_resize_square_pad64_crop():
    image = np.full((50, 100, 3), 7, np.uint8)
    out, window, scale, padding, _ = resize_image(image, 64, 128, 0, "square")
    assert out.shape == (128, 128, 3) and scale == pytest.approx(1.28)
    assert window == (32, 0, 96, 128)
    out, window, _, _, _ = resize_image(image, 0, 0, 0, "pad64")
    assert out.shape == (64, 128, 3) and window == (7, 14, 57, 114)
    rng = np.random.RandomState(0)
    out, window, _, _, crop = resize_image(image, 32, 0, 0, "crop", rng=rng)
    assert out.shape == (32, 32, 3) and crop[2:] == (32, 32)
    mask = np.zeros((50, 100, 1), bool)
    mask[10:20, 10:20] = True
    resized = resize_mask(mask, 1.28, [(32, 32), (0, 0), (0, 0)])
    assert resized.shape == (128, 128, 1) and resized.dtype == bool


def test_image_meta_roundtrip():
    meta = compose_image_meta(7, (50, 100, 3), (128, 128, 3), (32, 0, 96, 128), 1.28, [1, 1])
    parsed = parse_image_meta(meta[None])
    assert parsed["image_id"][0] == 7
    np.testing.assert_array_equal(parsed["window"][0], [32, 0, 96, 128])
    np.testing.assert_array_equal(parsed["active_class_ids"][0], [1, 1])


def test_mini_mask_roundtrip_and_unmold():
    mask = np.zeros((64, 64, 1), bool)
    mask[10:40, 20:30] = True
    box = box_ops.extract_bboxes(mask)
    mini = minimize_mask(box, mask, (28, 28))
    assert mini.shape == (28, 28, 1) and mini.all()
    back = expand_mask(box, mini, (64, 64))
    assert (back == mask).all()
    full = unmold_mask(np.ones((28, 28), np.float32), box[0], (64, 64))
    assert (full == mask[..., 0]).all()


def test_expand_mask_with_threshold_matches_per_mask_paste():
    rng = np.random.RandomState(0)
    soft = rng.rand(3, 28, 28).astype(np.float32)
    boxes = np.array([[2, 3, 20, 30], [10, 10, 11, 40], [5, 5, 5, 9]])   # last one empty
    stack = expand_mask(boxes, np.moveaxis(soft, 0, -1), (48, 50, 3), threshold=0.5)
    assert stack.shape == (48, 50, 3) and stack.dtype == bool
    for i in range(3):
        assert (stack[..., i] == unmold_mask(soft[i], boxes[i], (48, 50), 0.5)).all()
    assert not stack[..., 2].any() and stack[..., 0].any()
    assert expand_mask(np.zeros((0, 4)), np.zeros((28, 28, 0)), (8, 9)).shape == (8, 9, 0)


def test_image_meta_named_slices_numpy_and_tf():
    meta = compose_image_meta(3, (50, 100, 3), (128, 192, 3), (32, 0, 96, 128), 1.5, [1, 0, 1])
    parts = parse_image_meta_graph(tf.constant(meta[None]))
    np.testing.assert_array_equal(parts["image_hw"].numpy()[0], [128, 192])
    np.testing.assert_array_equal(parts["window"].numpy()[0], [32, 0, 96, 128])
    np.testing.assert_array_equal(parts["active_class_ids"].numpy()[0], [1, 0, 1])
    assert parse_image_meta(meta[None])["scale"][0] == pytest.approx(1.5)


def test_crop_mode_cuts_the_window_first_and_masks_follow():
    rng = np.random.RandomState(1)
    image = rng.randint(0, 255, (40, 60, 3)).astype(np.uint8)
    mask = np.zeros((40, 60, 1), bool)
    mask[10:30, 20:50] = True
    out, window, scale, padding, crop = resize_image(image, 64, 0, 2, "crop",
                                                     rng=np.random.RandomState(0))
    y, x, side, _ = crop
    assert side == 32 and scale == 2 and out.shape == (64, 64, 3) and window == (0, 0, 64, 64)
    expected = mask[y:y + side, x:x + side].repeat(2, axis=0).repeat(2, axis=1)
    np.testing.assert_array_equal(resize_mask(mask, scale, padding, crop), expected)


def test_nuclei_normalisation_makes_every_kind_bright_on_dark():
    rng = np.random.RandomState(0)
    blob = np.zeros((64, 64), bool)
    blob[20:40, 20:40] = True
    # brightfield-like: dark nucleus on a light background; fluorescence-like: dim bright one
    brightfield = np.where(blob, 90, 210)[..., None].repeat(3, -1) + rng.randint(0, 5, (64, 64, 3))
    fluorescence = np.where(blob, 40, 5)[..., None].repeat(3, -1) + rng.randint(0, 5, (64, 64, 3))
    for image in (brightfield.astype(np.uint8), fluorescence.astype(np.uint8)):
        out = normalize_image(image, "nuclei")
        assert out.dtype == np.uint8 and out.shape == image.shape
        assert (out[..., 0] == out[..., 2]).all()
        assert out[..., 0][blob].mean() > 200 and out[..., 0][~blob].mean() < 30
    assert normalize_image(brightfield, None) is brightfield
    with pytest.raises(ValueError, match="unknown image normalisation"):
        normalize_image(brightfield, "zscore")


def _stained_section(size=64):
    """An H&E-like image by Beer-Lambert from the stain vectors: a haematoxylin-rich nucleus
    (rows/cols 20:40), eosin-rich tissue (rows 44:), faint stain elsewhere; and both masks."""
    from mrcnn.ops.image import STAIN_VECTORS
    amounts = np.full((size, size, 3), 0.02)
    nucleus = np.zeros((size, size), bool)
    nucleus[20:40, 20:40] = True
    tissue = np.zeros((size, size), bool)
    tissue[44:] = True
    amounts[nucleus] = (1.0, 0.2, 0.0)
    amounts[tissue] = (0.05, 0.9, 0.0)
    noise = np.random.RandomState(0).uniform(0, 3, (size, size, 3))
    image = np.clip(255 * np.exp(-amounts @ STAIN_VECTORS) + noise, 0, 255).astype(np.uint8)
    return image, nucleus, tissue


def test_stain_normalisation_keeps_eosin_tissue_dark():
    image, nucleus, tissue = _stained_section()
    grey = normalize_image(image, "nuclei")[..., 0].astype(float)
    stain = normalize_image(image, "nuclei_stain")
    assert stain.dtype == np.uint8 and stain.shape == image.shape
    assert (stain[..., 0] == stain[..., 1]).all()
    stain = stain[..., 0].astype(float)
    # inverted grey: the eosin tissue is half as bright as the nucleus; haematoxylin: dark
    assert grey[tissue].mean() > 0.4 * grey[nucleus].mean()
    assert stain[nucleus].mean() > 200 and stain[tissue].mean() < 0.1 * stain[nucleus].mean()
    assert stain[~(nucleus | tissue)].mean() < 20
    # grey images (fluorescence, brightfield) are normalised exactly as under "nuclei"
    rng = np.random.RandomState(1)
    for background, blob in ((5, 40), (210, 90)):
        gray = np.full((64, 64), background) + rng.randint(0, 5, (64, 64))
        gray[20:40, 20:40] = blob
        rgb = gray[..., None].repeat(3, -1).astype(np.uint8)
        np.testing.assert_array_equal(normalize_image(rgb, "nuclei_stain"),
                                      normalize_image(rgb, "nuclei"))


def test_stretch_normalisation_brightens_dim_images_and_keeps_hue():
    rng = np.random.RandomState(0)
    # a dim fluorescence image: background 2-5, nuclei 40-60 (of 255)
    dim = (rng.randint(2, 6, (64, 64)))
    dim[20:40, 20:40] = rng.randint(40, 61, (20, 20))
    dim = dim[..., None].repeat(3, -1).astype(np.uint8)
    out = normalize_image(dim, "stretch")
    assert out.dtype == np.uint8 and out.shape == dim.shape
    low, high = np.percentile(dim, (1.0, 99.8))
    expected = np.clip((dim.astype(np.float32) - low) * (255.0 / (high - low)), 0, 255)
    np.testing.assert_array_equal(out, expected.astype(np.uint8))
    assert out[20:40, 20:40].mean() > 150 and out[:10].mean() < 15
    # a stained section keeps its hue order (one linear map for all channels)
    stained = _stained_section()[0]
    out = normalize_image(stained, "stretch").astype(int)
    nucleus = stained[25, 25].astype(int)
    assert list(np.argsort(out[25, 25])) == list(np.argsort(nucleus))
    assert out[25, 25, 2] - out[25, 25, 0] >= nucleus[2] - nucleus[0]


def test_clahe_normalisation_raises_a_faint_nucleus_beside_a_bright_one():
    rng = np.random.RandomState(0)
    # one textured field: a bright nucleus (200) top left, a faint one (50-69) bottom right,
    # background 10-39; 128 x 128, so each nucleus lies in its own CLAHE tiles
    grey = rng.randint(10, 40, (128, 128)).astype(np.uint8)
    grey[20:40, 20:40] = 200
    grey[80:100, 84:104] = rng.randint(50, 70, (20, 20))
    image = np.repeat(grey[..., None], 3, axis=-1)
    stretched = normalize_image(image, "stretch")[..., 0].astype(float)
    clahe = normalize_image(image, "clahe")
    assert clahe.dtype == np.uint8 and clahe.shape == image.shape
    assert (clahe[..., 0] == clahe[..., 1]).all() and (clahe[..., 0] == clahe[..., 2]).all()
    clahe = clahe[..., 0].astype(float)

    def faint_contrast(x):
        return x[80:100, 84:104].mean() - x[110:, 84:104].mean()
    assert faint_contrast(clahe) > 1.5 * faint_contrast(stretched)
    assert clahe[20:40, 20:40].mean() > clahe[80:100, 84:104].mean()   # order kept
    # a stained section keeps its hue: the nucleus stays bluer than red
    stained = _stained_section()[0]
    out = normalize_image(stained, "clahe").astype(int)
    assert out[25, 25, 2] > out[25, 25, 0]
    assert normalize_image(stained[..., 0], "clahe").shape == (64, 64)


@pytest.mark.parametrize("mode", ["stretch", "nuclei", "nuclei_stain"])
def test_exported_normalisation_matches_numpy(mode):
    from mrcnn.export import normalize_image_tf
    stained = _stained_section()[0]
    large = np.tile(stained, (5, 5, 1))                     # > 65536 pixels: subsampled stats
    gray = (np.random.RandomState(2).rand(48, 40) * 60).astype(np.uint8)
    for image in (stained, large, np.repeat(gray[..., None], 3, -1)):
        expected = normalize_image(image, mode).astype(int)
        got = normalize_image_tf(tf.constant(image, tf.float32), mode)
        diff = np.abs(got.numpy().astype(int) - expected)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_crop_scale_jitter_draws_sides_around_the_fixed_scale():
    from mrcnn.ops.image import choose_crop
    rng = np.random.RandomState(0)
    fixed = {choose_crop((300, 400), 256, 2, rng)[2] for _ in range(5)}
    assert fixed == {128}
    sides = [choose_crop((300, 400), 256, 2, rng, (0.5, 2.0))[2] for _ in range(200)]
    assert 64 <= min(sides) < 90 and 180 < max(sides) <= 256   # scale 1 .. 4
    assert abs(np.median(np.log(sides)) - np.log(128)) < 0.15  # log-uniform around 2
