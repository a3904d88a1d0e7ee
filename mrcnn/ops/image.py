"""Image resizing, molding and image-meta packing (NumPy, used by the data path and detect).

The image meta vector is Matterport's: ``[image_id, original_shape(3), image_shape(3),
window(4, pixels of the molded image), scale, active_class_ids(NUM_CLASSES)]``.
"""

import cv2
import numpy as np

RESIZE_MODES = ("none", "square", "pad64", "crop")


def resize_array(array, size, nearest=False):
    """Resize [H, W] or [H, W, C] to size (h, w) with OpenCV; any channel count, any dtype.

    Bilinear by default, nearest-neighbour with ``nearest=True`` (for masks).
    """
    array = np.asarray(array)
    h, w = int(size[0]), int(size[1])
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    dtype = array.dtype
    work = array.astype(np.uint8) if dtype == bool else array
    if work.dtype not in (np.uint8, np.uint16, np.float32, np.float64, np.int16):
        work = work.astype(np.float32)
    if work.ndim == 2 or work.shape[-1] <= 4:
        out = cv2.resize(work, (w, h), interpolation=interpolation)
        if work.ndim == 3 and out.ndim == 2:
            out = out[..., None]
    else:
        out = np.concatenate([
            cv2.resize(work[..., i:i + 4], (w, h), interpolation=interpolation).reshape(h, w, -1)
            for i in range(0, work.shape[-1], 4)], axis=-1)
    return out.astype(dtype)


def resize_image(image, min_dim=None, max_dim=None, min_scale=None, mode="square", rng=None):
    """Resize an image [H, W, C] keeping its aspect ratio, then pad or crop.

    Modes: ``none`` (unchanged), ``square`` (scale so the short side is >= min_dim and the long
    side <= max_dim, pad to max_dim x max_dim), ``pad64`` (scale by min_dim/min_scale, pad each
    side up to a multiple of 64), ``crop`` (scale, then a random min_dim x min_dim crop).

    Returns:
        image: resized image, same dtype.
        window: (y1, x1, y2, x2) pixels of the real image inside the padded one.
        scale: the factor applied.
        padding: [(top, bottom), (left, right), (0, 0)].
        crop: (y, x, h, w) of the crop in ``crop`` mode, else None.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown IMAGE_RESIZE_MODE {mode!r}; use one of {RESIZE_MODES}")
    image_dtype = image.dtype
    h, w = image.shape[:2]
    window = (0, 0, h, w)
    scale = 1.0
    padding = [(0, 0), (0, 0), (0, 0)]
    crop = None
    if mode == "none":
        return image, window, scale, padding, crop

    if min_dim:
        scale = max(1.0, min_dim / min(h, w))
    if min_scale and scale < min_scale:
        scale = float(min_scale)
    if max_dim and mode == "square":
        if round(max(h, w) * scale) > max_dim:
            scale = max_dim / max(h, w)
    if scale != 1:
        image = resize_array(image, (round(h * scale), round(w * scale))).astype(image_dtype)

    h, w = image.shape[:2]
    if mode == "square":
        top = (max_dim - h) // 2
        left = (max_dim - w) // 2
        padding = [(top, max_dim - h - top), (left, max_dim - w - left), (0, 0)]
        image = np.pad(image, padding, mode="constant")
        window = (top, left, h + top, w + left)
    elif mode == "pad64":
        pad_h = (64 - h % 64) % 64
        pad_w = (64 - w % 64) % 64
        padding = [(pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)]
        image = np.pad(image, padding, mode="constant")
        window = (padding[0][0], padding[1][0], h + padding[0][0], w + padding[1][0])
    elif mode == "crop":
        rng = rng if rng is not None else np.random
        if h < min_dim or w < min_dim:
            pad_h, pad_w = max(0, min_dim - h), max(0, min_dim - w)
            image = np.pad(image, [(0, pad_h), (0, pad_w), (0, 0)], mode="constant")
            h, w = image.shape[:2]
        y = int(rng.randint(0, h - min_dim + 1))
        x = int(rng.randint(0, w - min_dim + 1))
        crop = (y, x, min_dim, min_dim)
        image = image[y:y + min_dim, x:x + min_dim]
        window = (0, 0, min_dim, min_dim)
    return image, window, scale, padding, crop


def resize_mask(mask, scale, padding, crop=None):
    """Apply :func:`resize_image`'s scale, padding and crop to masks [H, W, N] -> bool."""
    mask = np.asarray(mask)
    if mask.shape[-1] == 0:
        h, w = mask.shape[:2]
        h, w = round(h * scale), round(w * scale)
        out = np.zeros((h, w, 0), dtype=bool)
    elif scale != 1:
        out = resize_array(mask.astype(bool), (round(mask.shape[0] * scale),
                           round(mask.shape[1] * scale)), nearest=True)
    else:
        out = mask.astype(bool)
    if crop is not None:
        y, x, h, w = crop
        pad_h, pad_w = max(0, y + h - out.shape[0]), max(0, x + w - out.shape[1])
        out = np.pad(out, [(0, pad_h), (0, pad_w), (0, 0)], mode="constant")
        return out[y:y + h, x:x + w]
    return np.pad(out, padding, mode="constant")


def mold_image(images, mean_pixel):
    """Float32 image(s) minus the mean pixel (the network's input convention)."""
    return images.astype(np.float32) - np.asarray(mean_pixel, dtype=np.float32)


def unmold_image(normalized_images, mean_pixel):
    """Inverse of :func:`mold_image` -> uint8."""
    return np.clip(normalized_images + mean_pixel, 0, 255).astype(np.uint8)


def compose_image_meta(image_id, original_image_shape, image_shape, window, scale,
                       active_class_ids):
    """Pack image attributes into one float vector (see module docstring)."""
    return np.array([image_id] + list(original_image_shape) + list(image_shape) +
                    list(window) + [scale] + list(active_class_ids), dtype=np.float32)


def parse_image_meta(meta):
    """Unpack a batch of image meta [B, META] into a dict of NumPy arrays."""
    meta = np.asarray(meta)
    return {
        "image_id": meta[:, 0].astype(np.int32),
        "original_image_shape": meta[:, 1:4].astype(np.int32),
        "image_shape": meta[:, 4:7].astype(np.int32),
        "window": meta[:, 7:11].astype(np.int32),
        "scale": meta[:, 11].astype(np.float32),
        "active_class_ids": meta[:, 12:].astype(np.int32),
    }


def to_rgb_uint8(image, channels=3):
    """Bring any loaded image to [H, W, channels] uint8: grayscale, RGBA, 16-bit, float."""
    image = np.asarray(image)
    if image.dtype == np.uint16 or (image.dtype.kind in "iu" and image.max(initial=0) > 255):
        top = max(int(image.max(initial=0)), 1)
        image = (image.astype(np.float64) * (255.0 / top)).round()
    elif image.dtype.kind == "f" and image.max(initial=0) <= 1.0:
        image = image * 255.0
    image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 4 and channels != 4:
        image = image[..., :3]
    if image.shape[-1] == 1 and channels == 3:
        image = np.repeat(image, 3, axis=-1)
    if image.shape[-1] == 3 and channels == 1:
        image = image.mean(axis=-1, keepdims=True).astype(np.uint8)
    return image
