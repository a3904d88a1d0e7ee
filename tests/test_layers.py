"""Every custom layer: output shapes, behaviour on hand-made inputs, get_config round trip."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn.layers import (AnchorGenerator, DetectionLayer, DetectionTargetLayer, GatherRows,
                          ImageROICrop, ProposalLayer, PyramidROIAlign, RefineBoxes,
                          ScatterToSlots, SelectBoxes, UnflattenRois, WholeInputConv2D)
from mrcnn.modeling.maskrcnn_model import NormalizeBoxes
from mrcnn.ops.anchors import backbone_shapes, generate_pyramid_anchors
from mrcnn.ops.boxes import norm_boxes
from mrcnn.ops.image import compose_image_meta

LAYERS = [
    AnchorGenerator([8, 16, 32, 64, 128], [0.5, 1, 2], [4, 8, 16, 32, 64], 1),
    AnchorGenerator([8, 16, 32, 64, 128], [1], [4, 8, 16, 32, 64], 1, octave=[1, 2 ** 0.5]),
    ProposalLayer(10, 0.7, 100, [0.1, 0.1, 0.2, 0.2]),
    DetectionTargetLayer(8, 0.5, [0.1, 0.1, 0.2, 0.2], (14, 14)),
    DetectionTargetLayer(8, 0.5, [0.1, 0.1, 0.2, 0.2], (14, 14), positive_sampling="per_instance"),
    DetectionLayer(5, 0.5, 0.3, [0.1, 0.1, 0.2, 0.2]),
    RefineBoxes([0.1, 0.1, 0.2, 0.2]),
    PyramidROIAlign((7, 7)), ImageROICrop((28, 28), scale=0.25),
    SelectBoxes("positive"), SelectBoxes("positive", per_image_limit=3),
    GatherRows(), ScatterToSlots(), UnflattenRois(), NormalizeBoxes(),
    WholeInputConv2D(6, 7, activation="relu"),
]


@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: type(layer).__name__)
def test_get_config_round_trip(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer) and restored.get_config() == config


def _meta(h=64, w=64, window=(0, 0, 64, 64)):
    return compose_image_meta(0, (h, w, 3), (h, w, 3), window, 1.0, [1, 1])[None]


def test_anchor_generator_matches_numpy():
    image = tf.zeros([2, 64, 128, 3])
    out = AnchorGenerator([8, 16, 32, 64, 128], [0.5, 1, 2], [4, 8, 16, 32, 64])(image).numpy()
    strides = [4, 8, 16, 32, 64]
    ref = norm_boxes(generate_pyramid_anchors([8, 16, 32, 64, 128], [0.5, 1, 2],
                                              backbone_shapes((64, 128), strides), strides, 1),
                     (64, 128))
    assert out.shape == (2,) + ref.shape
    np.testing.assert_allclose(out[1], ref, atol=1e-5)


def test_proposal_layer_orders_by_score_and_pads():
    anchors = np.array([[[0.1, 0.1, 0.3, 0.3], [0.11, 0.11, 0.31, 0.31], [0.6, 0.6, 0.9, 0.9]]],
                       np.float32)
    probs = np.array([[[0.1, 0.9], [0.2, 0.8], [0.3, 0.7]]], np.float32)
    out = ProposalLayer(5, 0.7, 100, [0.1, 0.1, 0.2, 0.2])(
        [probs, np.zeros((1, 3, 4), np.float32), anchors]).numpy()
    assert out.shape == (1, 5, 4)
    np.testing.assert_allclose(out[0, 0], anchors[0, 0])   # best score first
    np.testing.assert_allclose(out[0, 1], anchors[0, 2])   # near-duplicate suppressed
    assert not out[0, 2:].any()


def test_detection_target_layer_positive_targets():
    gt_box = np.array([[[0.2, 0.2, 0.6, 0.5]]], np.float32)
    proposals = np.concatenate([gt_box, [[[0.7, 0.7, 0.9, 0.9]]]], axis=1)
    gt_masks = np.zeros((1, 14, 14, 1), bool)
    gt_masks[0, :, :7, 0] = True                       # left half of the box
    layer = DetectionTargetLayer(6, 0.5, [0.1, 0.1, 0.2, 0.2], (14, 14), use_mini_mask=True,
                                 include_gt=False)
    rois, class_ids, deltas, masks = (t.numpy() for t in layer(
        [proposals, np.array([[1]], np.int32), gt_box, gt_masks]))
    assert rois.shape == (1, 6, 4) and masks.shape == (1, 6, 14, 14)
    assert class_ids[0].tolist() == [1, 0, 0, 0, 0, 0]
    np.testing.assert_allclose(rois[0, 0], gt_box[0, 0])
    np.testing.assert_allclose(deltas[0, 0], 0, atol=1e-5)
    np.testing.assert_allclose(rois[0, 1], [0.7, 0.7, 0.9, 0.9])   # the negative
    assert masks[0, 0, :, :6].all() and not masks[0, 0, :, 8:].any()
    assert not rois[0, 2:].any()


def _big_and_small_object(copies):
    """``copies`` images, each with a large object covered by 30 proposals (shifted copies of
    its box, IoU > 0.5) and a small object covered by its own box only, as layer inputs."""
    big, small = [0.1, 0.1, 0.6, 0.6], [0.8, 0.8, 0.85, 0.85]
    shifts = np.linspace(0.0, 0.05, 30)[:, None] * np.array([1, 1, 1, 1])
    proposals = np.concatenate([np.array(big) + shifts, [small]])[None].repeat(copies, 0)
    gt_boxes = np.array([[big, small]], np.float32).repeat(copies, 0)
    gt_masks = np.ones((copies, 14, 14, 2), bool)
    return [proposals.astype(np.float32), np.ones((copies, 2), np.int32), gt_boxes, gt_masks]


@pytest.mark.parametrize("sampling, low, high", [("uniform", 0.0, 0.3),
                                                 ("per_instance", 0.8, 1.0)])
def test_detection_target_positive_sampling_share_of_a_small_object(sampling, low, high):
    # 31 positives, 4 kept. Uniform keeps the small object's only positive with probability
    # 4/31 = 0.13; per-instance sampling weights it 1 against 1/30 for each of the big
    # object's, so it is kept with probability 1 - 0.5 * 0.49 * 0.48 * 0.47 = 0.94.
    tf.random.set_seed(0)
    layer = DetectionTargetLayer(8, 0.5, [0.1, 0.1, 0.2, 0.2], (14, 14), include_gt=False,
                                 positive_sampling=sampling)
    inputs = _big_and_small_object(200)
    rois, class_ids, _, _ = (t.numpy() for t in layer(inputs))
    assert (class_ids[:, :4] == 1).all() and (class_ids[:, 4:] == 0).all()
    small_kept = np.any(np.all(np.isclose(rois[:, :4], inputs[0][:, -1:]), axis=-1), axis=1)
    assert low <= small_kept.mean() <= high


def test_detection_target_per_instance_keeps_every_positive_when_few():
    layer = DetectionTargetLayer(128, 0.5, [0.1, 0.1, 0.2, 0.2], (14, 14), include_gt=False,
                                 positive_sampling="per_instance")
    rois, class_ids, _, _ = (t.numpy() for t in layer(_big_and_small_object(1)))
    assert (class_ids[0] == 1).sum() == 31
    with pytest.raises(ValueError, match="positive_sampling='balanced'"):
        DetectionTargetLayer(8, 0.5, [0.1] * 4, (14, 14), positive_sampling="balanced")


def test_detection_target_layer_without_ground_truth_gives_negatives():
    proposals = np.array([[[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.8, 0.8]]], np.float32)
    layer = DetectionTargetLayer(4, 0.33, [0.1, 0.1, 0.2, 0.2], (14, 14))
    rois, class_ids, _, _ = (t.numpy() for t in layer(
        [proposals, np.zeros((1, 3), np.int32), np.zeros((1, 3, 4), np.float32),
         np.zeros((1, 14, 14, 3), bool)]))
    assert (class_ids == 0).all()
    assert np.any(rois[0] != 0, axis=1).sum() == 2


def test_detection_layer_per_class_nms_and_window():
    rois = np.array([[[0.1, 0.1, 0.4, 0.4], [0.12, 0.12, 0.42, 0.42], [0.5, 0.5, 0.9, 0.9],
                      [0, 0, 0, 0]]], np.float32)
    probs = np.array([[[0.1, 0.9, 0.0], [0.2, 0.8, 0.0], [0.1, 0.2, 0.7], [1, 0, 0]]], np.float32)
    deltas = np.zeros((1, 4, 3, 4), np.float32)
    meta = compose_image_meta(0, (64, 64, 3), (64, 64, 3), (0, 0, 64, 40), 1, [1, 1, 1])[None]
    out = DetectionLayer(5, 0.5, 0.3, [0.1, 0.1, 0.2, 0.2])(
        [rois, probs, deltas, meta]).numpy()[0]
    assert out.shape == (5, 6)
    assert out[:2, 4].tolist() == [1, 2] and out[:2, 5].tolist() == pytest.approx([0.9, 0.7])
    window_right = (40 - 1) / 63.0
    assert out[1, 3] == pytest.approx(window_right, abs=1e-5)   # clipped to the window
    assert not out[2:].any()


def test_refine_boxes_uses_best_foreground_class_and_window():
    rois = np.array([[[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.7, 0.7], [0, 0, 0, 0],
                      [0.9, 0.9, 1.0, 1.0]]], np.float32)
    # Classes: background, a, b. ROI 1 is background to the head but still refined by its
    # best foreground class (b); ROI 2 is padding; ROI 3's box moves off the image.
    probs = np.array([[[0.2, 0.7, 0.1], [0.6, 0.1, 0.3], [1, 0, 0], [0.1, 0.9, 0.0]]],
                     np.float32)
    deltas = np.full((1, 4, 3, 4), 3.0, np.float32)        # the classes not chosen: far off
    deltas[0, 0, 1] = [1.0, 0, 0, 0]                          # dy 0.1 of h 0.2: down 0.02
    deltas[0, 1, 2] = [0, 0, np.log(2) / 0.2, 0]              # twice as tall
    deltas[0, 3, 1] = [0, 20.0, 0, 0]                         # right by twice w: off the image
    meta = compose_image_meta(0, (64, 64, 3), (64, 64, 3), (0, 0, 64, 64), 1, [1, 1, 1])[None]
    out = RefineBoxes([0.1, 0.1, 0.2, 0.2])([rois, probs, deltas, meta]).numpy()[0]
    np.testing.assert_allclose(out[0], [0.12, 0.1, 0.32, 0.3], atol=1e-6)
    np.testing.assert_allclose(out[1], [0.4, 0.5, 0.8, 0.7], atol=1e-6)
    assert not out[2].any()                                   # padding stays padding
    np.testing.assert_allclose(out[3], rois[0, 3])            # empty after clipping: kept


def test_pyramid_roi_align_picks_level_and_keeps_order():
    feats = [np.full((1, 64 // s, 64 // s, 2), float(s), np.float32) for s in (4, 8, 16, 32)]
    boxes = np.array([[0, 0, 1, 1], [0.1, 0.1, 0.2, 0.2], [0, 0, 0.5, 0.5]], np.float32)
    out = PyramidROIAlign((3, 3))([boxes, np.zeros(3, np.int32), _meta()] + feats).numpy()
    assert out.shape == (3, 3, 3, 2)
    # 64 px image: the whole image maps to level 4 + log2(64/224) -> 2 (clipped).
    assert out[:, 0, 0, 0].tolist() == [4.0, 4.0, 4.0]


def test_select_gather_scatter_unflatten():
    boxes = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    ids = np.array([[1, 0, 2], [0, 0, 1]], np.int32)
    sel, batch, flat = (t.numpy() for t in SelectBoxes("positive")([boxes, ids]))
    assert flat.tolist() == [0, 2, 5] and batch.tolist() == [0, 0, 1]
    np.testing.assert_array_equal(sel, boxes.reshape(-1, 4)[[0, 2, 5]])
    np.testing.assert_array_equal(GatherRows()([ids, flat]).numpy(), [1, 2, 1])
    scattered = ScatterToSlots()([sel, flat, boxes]).numpy()
    np.testing.assert_array_equal(scattered.reshape(-1, 4)[[0, 2, 5]], sel)
    assert not scattered[0, 1].any()
    detections = np.concatenate([boxes, ids[..., None].astype(np.float32),
                                 np.ones((2, 3, 1), np.float32)], -1)
    assert SelectBoxes("detections")(detections)[2].numpy().tolist() == [0, 2, 5]
    flat_all = SelectBoxes("all")(boxes)[0]
    np.testing.assert_array_equal(UnflattenRois()([flat_all, boxes]).numpy(), boxes)


def test_select_positive_rows_per_image_limit():
    """MASK_TRAIN_ROIS_PER_IMAGE: at most ``limit`` of each image's first (positive) rows."""
    boxes = np.arange(2 * 5 * 4, dtype=np.float32).reshape(2, 5, 4)
    ids = np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], np.int32)
    flat = SelectBoxes("positive", per_image_limit=2)([boxes, ids])[2].numpy()
    assert flat.tolist() == [0, 1, 5]
    assert SelectBoxes("positive")([boxes, ids])[2].numpy().tolist() == [0, 1, 2, 5]


def test_whole_input_conv_equals_valid_conv():
    """The matmul form gives the Conv2D's result with the same weights, and rejects inputs
    that are not kernel-sized."""
    x = np.random.RandomState(0).rand(5, 7, 7, 8).astype("float32")
    layer = WholeInputConv2D(6, 7, activation="relu")
    out = keras.ops.convert_to_numpy(layer(x))
    conv = keras.layers.Conv2D(6, 7, activation="relu")
    conv.build(x.shape)
    conv.set_weights(layer.get_weights())
    assert out.shape == (5, 1, 1, 6)
    np.testing.assert_allclose(out, keras.ops.convert_to_numpy(conv(x)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="must equal the kernel size"):
        WholeInputConv2D(6, 7)(np.zeros((1, 9, 9, 8), "float32"))
