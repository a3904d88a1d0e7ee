"""Anchor generation, NumPy and TensorFlow twins.

Anchors are ``[A, (y1, x1, y2, x2)]`` in pixels of the molded image (or normalised, via
:func:`mrcnn.ops.boxes.norm_boxes`). Order: level by level (P2..P6); inside a level, row-major
over feature cells, and for each cell its anchor shapes: octave scale outer, ratio inner (with
one octave scale, Matterport's layout: the cell's ratios together). The RPN head emits its
outputs in the same order.

``octave_scales`` are multipliers of a level's anchor side, ``(1.0,)`` in Matterport's design
(one side per level). A level's sides double from one level to the next, so a nucleus whose
side falls between two of them has no anchor much like it; ``(1, 2 ** 0.5)`` (two scales per
octave, as RetinaNet uses three) fills the gap.
"""

import math

import numpy as np
import tensorflow as tf


def backbone_shapes(image_shape, strides):
    """Feature map sizes [L, 2] for an image (H, W, ...) and the backbone strides."""
    return np.array([[int(math.ceil(image_shape[0] / s)), int(math.ceil(image_shape[1] / s))]
                     for s in strides])


def octave_scales(per_octave):
    """Side multipliers of ``per_octave`` anchor scales per octave: 2 ** (k / per_octave)."""
    return [float(2 ** (k / per_octave)) for k in range(int(per_octave))]


def anchor_shapes(scale, ratios, octave=(1.0,)):
    """(heights, widths) [K] of one cell's anchors, K = len(octave) * len(ratios), octave
    scale outer, ratio inner."""
    sides = scale * np.asarray(octave, dtype=np.float64)[:, None]
    ratios = np.sqrt(np.asarray(ratios, dtype=np.float64))[None, :]
    return (sides / ratios).ravel(), (sides * ratios).ravel()


def generate_anchors(scale, ratios, shape, feature_stride, anchor_stride, octave=(1.0,)):
    """Anchors of one level, pixels. -> [rows * cols * len(octave) * len(ratios), 4] float32."""
    heights, widths = anchor_shapes(scale, ratios, octave)
    shifts_y = np.arange(0, shape[0], anchor_stride) * feature_stride
    shifts_x = np.arange(0, shape[1], anchor_stride) * feature_stride
    shifts_x, shifts_y = np.meshgrid(shifts_x, shifts_y)
    box_widths, box_centers_x = np.meshgrid(widths, shifts_x)
    box_heights, box_centers_y = np.meshgrid(heights, shifts_y)
    centers = np.stack([box_centers_y, box_centers_x], axis=2).reshape([-1, 2])
    sizes = np.stack([box_heights, box_widths], axis=2).reshape([-1, 2])
    return np.concatenate([centers - 0.5 * sizes, centers + 0.5 * sizes], axis=1).astype(np.float32)


def generate_pyramid_anchors(scales, ratios, feature_shapes, feature_strides, anchor_stride,
                             octave=(1.0,)):
    """Anchors of every level concatenated, pixels -> [A, 4] float32."""
    return np.concatenate([
        generate_anchors(s, ratios, shape, stride, anchor_stride, octave)
        for s, shape, stride in zip(scales, feature_shapes, feature_strides)], axis=0)


def pyramid_strides(backbone_strides):
    """Strides of P2..P6 from the backbone's C2..C5 strides (P6 subsamples P5 by 2)."""
    strides = [int(s) for s in backbone_strides]
    return strides + [2 * strides[-1]]


def pyramid_anchors(image_shape, scales, ratios, strides, anchor_stride, octave=(1.0,)):
    """Pixel anchors [A, 4] for a molded image of ``image_shape`` (H, W, ...), one scale per
    pyramid level of ``strides`` (P2..P6) times the ``octave`` multipliers, in the order the
    model generates them."""
    return generate_pyramid_anchors(scales, ratios, backbone_shapes(image_shape, strides),
                                    strides, anchor_stride, octave)


def tf_generate_pyramid_anchors(image_hw, scales, ratios, feature_strides, anchor_stride,
                                octave=(1.0,)):
    """TF twin of :func:`generate_pyramid_anchors`, sized from a dynamic image shape.

    Args:
        image_hw: int tensor [2], the molded image (H, W).
        scales, ratios, feature_strides, anchor_stride, octave: as the NumPy version (Python
            values).

    Returns:
        Pixel anchors [A, 4] float32 in the same order as the NumPy twin.
    """
    hw = tf.cast(image_hw, tf.float32)
    levels = []
    for scale, stride in zip(scales, feature_strides):
        rows = tf.cast(tf.math.ceil(hw[0] / stride), tf.int32)
        cols = tf.cast(tf.math.ceil(hw[1] / stride), tf.int32)
        ys = tf.cast(tf.range(0, rows, anchor_stride), tf.float32) * stride
        xs = tf.cast(tf.range(0, cols, anchor_stride), tf.float32) * stride
        cy, cx = tf.meshgrid(ys, xs, indexing="ij")              # [r, c]
        heights, widths = anchor_shapes(scale, ratios, octave)
        heights = tf.constant(heights, tf.float32)                # [k]
        widths = tf.constant(widths, tf.float32)
        cy = tf.reshape(cy, [-1, 1]) + tf.zeros_like(heights)[None]  # [r*c, k]
        cx = tf.reshape(cx, [-1, 1]) + tf.zeros_like(widths)[None]
        h = tf.zeros_like(cy) + heights[None]
        w = tf.zeros_like(cx) + widths[None]
        boxes = tf.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)
        levels.append(tf.reshape(boxes, [-1, 4]))
    return tf.concat(levels, axis=0)
