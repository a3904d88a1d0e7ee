"""Box operations as NumPy / TensorFlow twins.

Boxes are ``[N, (y1, x1, y2, x2)]``. In pixel coordinates (y2, x2) lie one past the last
pixel, so a box covering rows 3..5 is (3, ., 6, .). Normalised coordinates divide pixel
coordinates by (H - 1, W - 1) after shifting (y2, x2) by one (Matterport's convention), so
both corners lie in [0, 1]. Deltas are ``[N, (dy, dx, log(dh), log(dw))]``.
"""

import numpy as np
import tensorflow as tf


def compute_overlaps(boxes1, boxes2):
    """IoU matrix. boxes1 [N, 4], boxes2 [M, 4] (same units) -> [N, M] float."""
    boxes1 = np.asarray(boxes1, dtype=np.float64).reshape(-1, 4)
    boxes2 = np.asarray(boxes2, dtype=np.float64).reshape(-1, 4)
    return paired_overlaps(boxes1[:, None], boxes2[None])


def paired_overlaps(boxes1, boxes2):
    """IoU of boxes1 [..., 4] with boxes2 [..., 4] (broadcast; same units) -> [...] float64:
    :func:`compute_overlaps` for given pairs, with the same arithmetic (the same values)."""
    boxes1 = np.asarray(boxes1, dtype=np.float64)
    boxes2 = np.asarray(boxes2, dtype=np.float64)
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    y1 = np.maximum(boxes1[..., 0], boxes2[..., 0])
    x1 = np.maximum(boxes1[..., 1], boxes2[..., 1])
    y2 = np.minimum(boxes1[..., 2], boxes2[..., 2])
    x2 = np.minimum(boxes1[..., 3], boxes2[..., 3])
    inter = np.maximum(y2 - y1, 0) * np.maximum(x2 - x1, 0)
    union = area1 + area2 - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def touching_boxes(boxes, others):
    """Which ``boxes`` [N, 4] may overlap one of ``others`` [M, 4] with positive area -> [N]
    bool (pixels). Never misses an overlap: an unmarked box has IoU 0 with every one of
    ``others``, so IoUs need only be computed for the marked ones. Exact (only overlapping
    boxes marked) when ``others`` have integer corners, as ground-truth boxes do.

    ``others`` are painted, rounded outwards, on a pixel grid spanning them, and each box
    counts the painted pixels it touches with a summed-area table, so the cost is that grid
    plus a few operations per box instead of N x M.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    others = np.asarray(others, dtype=np.float64).reshape(-1, 4)
    if not len(others) or not len(boxes):
        return np.zeros([len(boxes)], dtype=bool)
    origin = np.floor(others[:, :2].min(axis=0)).astype(np.int64)
    top_left = np.floor(others[:, :2]).astype(np.int64) - origin
    bottom_right = np.maximum(np.ceil(others[:, 2:]).astype(np.int64) - origin, top_left)
    height, width = bottom_right.max(axis=0)
    painted = np.zeros((height + 1, width + 1), dtype=np.int32)   # a 2-D difference array
    (top, left), (bottom, right) = top_left.T, bottom_right.T
    np.add.at(painted, (np.concatenate([top, top, bottom, bottom]),
                        np.concatenate([left, right, left, right])),
              np.repeat(np.array([1, -1, -1, 1], np.int32), len(others)))
    covered = painted.cumsum(axis=0).cumsum(axis=1)[:height, :width] > 0
    table = np.zeros((height + 1, width + 1), dtype=np.int64)
    table[1:, 1:] = covered.cumsum(axis=0).cumsum(axis=1)
    # A box touches the pixel rows floor(y1) .. ceil(y2) - 1 (half-open in table indices).
    y1 = np.clip(np.floor(boxes[:, 0]).astype(np.int64) - origin[0], 0, height)
    x1 = np.clip(np.floor(boxes[:, 1]).astype(np.int64) - origin[1], 0, width)
    y2 = np.clip(np.ceil(boxes[:, 2]).astype(np.int64) - origin[0], 0, height)
    x2 = np.clip(np.ceil(boxes[:, 3]).astype(np.int64) - origin[1], 0, width)
    return table[y2, x2] - table[y1, x2] - table[y2, x1] + table[y1, x1] > 0


def compute_iou(box, boxes, box_area=None, boxes_area=None):
    """IoU of one box [4] against boxes [N, 4] -> [N] (Matterport-compatible signature)."""
    return compute_overlaps(np.asarray(box)[None], boxes)[0]


def tf_overlaps(boxes1, boxes2):
    """TF twin of :func:`compute_overlaps`. [N, 4], [M, 4] -> [N, M] float32."""
    b1 = tf.cast(boxes1, tf.float32)
    b2 = tf.cast(boxes2, tf.float32)
    area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    y1 = tf.maximum(b1[:, None, 0], b2[None, :, 0])
    x1 = tf.maximum(b1[:, None, 1], b2[None, :, 1])
    y2 = tf.minimum(b1[:, None, 2], b2[None, :, 2])
    x2 = tf.minimum(b1[:, None, 3], b2[None, :, 3])
    inter = tf.maximum(y2 - y1, 0.0) * tf.maximum(x2 - x1, 0.0)
    union = area1[:, None] + area2[None, :] - inter
    return tf.math.divide_no_nan(inter, union)


def box_refinement(box, gt_box):
    """Deltas that turn ``box`` into ``gt_box``. [N, 4], [N, 4] -> [N, 4] float32."""
    box = np.asarray(box, dtype=np.float32)
    gt_box = np.asarray(gt_box, dtype=np.float32)
    h = box[:, 2] - box[:, 0]
    w = box[:, 3] - box[:, 1]
    cy = box[:, 0] + 0.5 * h
    cx = box[:, 1] + 0.5 * w
    gh = gt_box[:, 2] - gt_box[:, 0]
    gw = gt_box[:, 3] - gt_box[:, 1]
    gcy = gt_box[:, 0] + 0.5 * gh
    gcx = gt_box[:, 1] + 0.5 * gw
    return np.stack([(gcy - cy) / h, (gcx - cx) / w, np.log(gh / h), np.log(gw / w)], axis=1)


def tf_box_refinement(box, gt_box):
    """TF twin of :func:`box_refinement`."""
    box = tf.cast(box, tf.float32)
    gt_box = tf.cast(gt_box, tf.float32)
    h = box[:, 2] - box[:, 0]
    w = box[:, 3] - box[:, 1]
    cy = box[:, 0] + 0.5 * h
    cx = box[:, 1] + 0.5 * w
    gh = gt_box[:, 2] - gt_box[:, 0]
    gw = gt_box[:, 3] - gt_box[:, 1]
    gcy = gt_box[:, 0] + 0.5 * gh
    gcx = gt_box[:, 1] + 0.5 * gw
    return tf.stack([(gcy - cy) / h, (gcx - cx) / w,
                     tf.math.log(gh / h), tf.math.log(gw / w)], axis=1)


# log(1000/16): the largest size change a delta may ask for, as in detectron2; stops
# exp() overflowing on an untrained network.
_MAX_LOG_SCALE = float(np.log(1000.0 / 16))


def apply_box_deltas(boxes, deltas):
    """Apply deltas [N, 4] (dy, dx, log dh, log dw) to boxes [N, 4] -> [N, 4] (NumPy), in the
    boxes' units. The log-scale deltas are clipped to log(1000/16), as in the TF twin."""
    boxes = np.asarray(boxes, dtype=np.float32)
    deltas = np.asarray(deltas, dtype=np.float32)
    h = boxes[:, 2] - boxes[:, 0]
    w = boxes[:, 3] - boxes[:, 1]
    cy = boxes[:, 0] + 0.5 * h + deltas[:, 0] * h
    cx = boxes[:, 1] + 0.5 * w + deltas[:, 1] * w
    h = h * np.exp(np.minimum(deltas[:, 2], _MAX_LOG_SCALE))
    w = w * np.exp(np.minimum(deltas[:, 3], _MAX_LOG_SCALE))
    return np.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=1)


def tf_apply_box_deltas(boxes, deltas):
    """TF twin of :func:`apply_box_deltas`; works on [..., 4] with matching leading dims.

    The log-scale deltas are clipped to log(1000/16) so untrained heads cannot overflow.
    """
    h = boxes[..., 2] - boxes[..., 0]
    w = boxes[..., 3] - boxes[..., 1]
    cy = boxes[..., 0] + 0.5 * h + deltas[..., 0] * h
    cx = boxes[..., 1] + 0.5 * w + deltas[..., 1] * w
    h = h * tf.exp(tf.minimum(deltas[..., 2], _MAX_LOG_SCALE))
    w = w * tf.exp(tf.minimum(deltas[..., 3], _MAX_LOG_SCALE))
    return tf.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)


def tf_clip_boxes(boxes, window):
    """Clip boxes [..., N, 4] to a window [4], or one window per batch entry [B, 4]."""
    window = tf.cast(window, boxes.dtype)
    if window.shape.rank > 1:
        window = window[..., None, :]
    low = tf.concat([window[..., :2], window[..., :2]], axis=-1)
    high = tf.concat([window[..., 2:], window[..., 2:]], axis=-1)
    return tf.minimum(tf.maximum(boxes, low), high)


def norm_boxes(boxes, shape):
    """Pixel boxes [N, 4] -> normalised, for an image of shape (H, W)."""
    h, w = shape[:2]
    scale = np.array([h - 1, w - 1, h - 1, w - 1], dtype=np.float32)
    shift = np.array([0, 0, 1, 1], dtype=np.float32)
    return ((np.asarray(boxes, dtype=np.float32) - shift) / scale).astype(np.float32)


def denorm_boxes(boxes, shape):
    """Normalised boxes [N, 4] -> integer pixel boxes, for an image of shape (H, W)."""
    h, w = shape[:2]
    scale = np.array([h - 1, w - 1, h - 1, w - 1], dtype=np.float32)
    shift = np.array([0, 0, 1, 1], dtype=np.float32)
    return np.around(np.asarray(boxes, dtype=np.float32) * scale + shift).astype(np.int32)


def tf_norm_boxes(boxes, shape):
    """TF twin of :func:`norm_boxes`; shape is a [2] tensor (H, W)."""
    h, w = tf.split(tf.cast(shape, tf.float32), 2)
    scale = tf.concat([h, w, h, w], axis=-1) - 1.0
    shift = tf.constant([0.0, 0.0, 1.0, 1.0])
    return tf.math.divide(tf.cast(boxes, tf.float32) - shift, scale)


def instance_planes(mask):
    """Instance masks [H, W, N] as a C-contiguous [N, H, W] array (the same values): reductions
    over one instance's pixels then read contiguous memory instead of every N-th element, about
    three to six times faster for the few-instance stacks of a training crop."""
    planes = np.moveaxis(np.asarray(mask), -1, 0)
    return planes if planes.flags.c_contiguous else np.ascontiguousarray(planes)


def extract_bboxes(mask):
    """Tight pixel boxes of instance masks [H, W, N] -> [N, 4] int32; empty masks give zeros."""
    mask = np.asarray(mask)
    n = mask.shape[-1]
    if n == 0:
        return np.zeros([0, 4], dtype=np.int32)
    planes = instance_planes(mask)
    rows, cols = planes.any(axis=2), planes.any(axis=1)      # [N, H], [N, W]
    height, width = rows.shape[1], cols.shape[1]
    boxes = np.stack([rows.argmax(axis=1), cols.argmax(axis=1),
                      height - rows[:, ::-1].argmax(axis=1),
                      width - cols[:, ::-1].argmax(axis=1)], axis=1).astype(np.int32)
    boxes[~rows.any(axis=1)] = 0
    return boxes
