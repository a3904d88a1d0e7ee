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

from mrcnn.ops.boxes import paired_overlaps


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


class AnchorGrid:
    """The anchors of :func:`pyramid_anchors` together with the grid that laid them out, so
    the anchors overlapping a box are enumerated from its position instead of testing all A
    anchors against it (RPN training targets: about 33 000 anchors per 256 px crop).

    ``anchors`` is exactly :func:`pyramid_anchors`' array ([A, 4] float32 pixels, same order).
    Each (level, anchor shape) pair is one *type*: its anchors sit on a ``rows x cols`` grid of
    centres ``spacing`` pixels apart, at indices ``offset + (row * cols + col) * shapes + k``.
    """

    def __init__(self, image_shape, scales, ratios, strides, anchor_stride, octave=(1.0,)):
        self.anchors = pyramid_anchors(image_shape, scales, ratios, strides, anchor_stride,
                                       octave)
        self._coords = self.anchors.astype(np.float64)
        types, offset = [], 0
        for scale, shape, stride in zip(scales, backbone_shapes(image_shape, strides), strides):
            heights, widths = anchor_shapes(scale, ratios, octave)
            rows = len(range(0, int(shape[0]), anchor_stride))
            cols = len(range(0, int(shape[1]), anchor_stride))
            for k, (h, w) in enumerate(zip(heights, widths)):
                types.append((offset + k, len(heights), rows, cols, anchor_stride * stride,
                              h / 2, w / 2))
            offset += rows * cols * len(heights)
        (self._first, self._shapes, self._rows, self._cols,
         self._spacing, self._half_h, self._half_w) = (np.array(column) for column in zip(*types))

    def __len__(self):
        return len(self.anchors)

    def pairs(self, boxes):
        """Every (anchor, box) pair whose areas may overlap, box-major.

        Args:
            boxes: [G, 4] pixels.

        Returns:
            (anchor indices [P], box indices [P]) int64. Holds every pair with a positive
            overlap (and some that only come within a pixel of one), each pair once.
        """
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        # A type's anchor at grid row r spans r * spacing -+ half_h: it may overlap the box
        # when its centre lies within half_h (plus a pixel against float32 rounding) of it.
        first_row = np.ceil((boxes[:, 0:1] - self._half_h - 1) / self._spacing)
        end_row = np.floor((boxes[:, 2:3] + self._half_h + 1) / self._spacing) + 1
        first_col = np.ceil((boxes[:, 1:2] - self._half_w - 1) / self._spacing)
        end_col = np.floor((boxes[:, 3:4] + self._half_w + 1) / self._spacing) + 1
        first_row = np.clip(first_row, 0, self._rows).astype(np.int64).ravel()   # [G * T]
        first_col = np.clip(first_col, 0, self._cols).astype(np.int64).ravel()
        n_rows = np.clip(end_row, 0, self._rows).astype(np.int64).ravel() - first_row
        n_cols = np.clip(end_col, 0, self._cols).astype(np.int64).ravel() - first_col
        counts = np.maximum(n_rows, 0) * np.maximum(n_cols, 0)
        block = np.repeat(np.arange(len(counts)), counts)         # (box, type) of each pair
        within = np.arange(len(block)) - (np.cumsum(counts) - counts)[block]
        row = first_row[block] + within // n_cols[block]
        col = first_col[block] + within % n_cols[block]
        kind = block % len(self._first)
        anchor = self._first[kind] + (row * self._cols[kind] + col) * self._shapes[kind]
        return anchor, block // len(self._first)

    def pair_overlaps(self, anchor, boxes):
        """IoU of each anchor ``anchor`` [P] with its box ``boxes`` [P, 4] pixels -> [P]
        float64 (:func:`mrcnn.ops.boxes.paired_overlaps`: the values of
        :func:`mrcnn.ops.boxes.compute_overlaps`, to the last bit)."""
        return paired_overlaps(self._coords[anchor], np.asarray(boxes).reshape(-1, 4))
