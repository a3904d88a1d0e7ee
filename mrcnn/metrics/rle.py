"""Kaggle run-length encoding and the DSB2018 submission file.

Kaggle's RLE lists ``start length`` pairs, starts 1-based, pixels numbered top to bottom then
left to right (column-major). Kaggle rejects overlapping masks, so :func:`mask_to_rle` gives
each contested pixel to the highest-scoring instance first.
"""

import csv

import numpy as np

from mrcnn.atomic import atomic_target


def rle_encode(mask):
    """[H, W] bool -> "start length start length ..." ('' for an empty mask)."""
    pixels = np.asarray(mask, dtype=bool).flatten(order="F")
    padded = np.concatenate([[False], pixels, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1]) + 1
    starts, ends = edges[::2], edges[1::2]
    return " ".join(f"{s} {e - s}" for s, e in zip(starts, ends))


def rle_decode(rle, shape):
    """Inverse of :func:`rle_encode`: string and (H, W) -> [H, W] bool.

    Raises:
        ValueError: an odd count of numbers, or runs outside the image.
    """
    values = [int(v) for v in str(rle).split()]
    if len(values) % 2:
        raise ValueError(f"RLE has an odd number of values ({len(values)})")
    flat = np.zeros(shape[0] * shape[1], dtype=bool)
    for start, length in zip(values[::2], values[1::2]):
        if start < 1 or start - 1 + length > flat.size:
            raise ValueError(f"RLE run {start} {length} lies outside a {shape} image")
        flat[start - 1:start - 1 + length] = True
    return flat.reshape(shape, order="F")


def remove_overlaps(masks, scores=None):
    """Give every pixel to at most one instance, highest score first; drop emptied ones.

    Args:
        masks: [H, W, N] bool. scores: [N] (default: the given order is the priority).

    Returns:
        (masks [H, W, N'] bool, kept indices [N'] into the input).
    """
    masks = np.asarray(masks, dtype=bool)
    n = masks.shape[-1]
    order = np.argsort(-np.asarray(scores), kind="stable") if scores is not None \
        else np.arange(n)
    taken = np.zeros(masks.shape[:2], dtype=bool)
    out, kept = [], []
    for i in order:
        m = masks[..., i] & ~taken
        if m.any():
            taken |= m
            out.append(m)
            kept.append(i)
    stack = np.stack(out, axis=-1) if out else np.zeros(masks.shape[:2] + (0,), bool)
    return stack, np.array(kept, dtype=np.int64)


def mask_to_rle(image_id, masks, scores=None):
    """Submission rows ``(image_id, rle)`` for one image, overlaps removed by score.

    An image without detections yields one row with an empty EncodedPixels, so it still
    appears in the file.
    """
    clean, _ = remove_overlaps(masks, scores)
    rows = [(image_id, rle_encode(clean[..., i])) for i in range(clean.shape[-1])]
    return rows or [(image_id, "")]


def write_submission(path, rows):
    """Write ``ImageId,EncodedPixels`` rows atomically (a crash leaves no partial file)."""
    with atomic_target(path, ".csv.tmp") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ImageId", "EncodedPixels"])
        writer.writerows(rows)
    return path


def read_submission(path):
    """{image_id: [rle, ...]} from a submission CSV (empty RLEs skipped)."""
    out = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rles = out.setdefault(row["ImageId"], [])
            if row["EncodedPixels"].strip():
                rles.append(row["EncodedPixels"])
    return out
