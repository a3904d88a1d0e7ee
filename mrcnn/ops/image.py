"""Image resizing, molding and image-meta packing (used by the data path and detect).

The image meta vector is Matterport's: ``[image_id, original_shape(3), image_shape(3),
window(4, pixels of the molded image), scale, active_class_ids(NUM_CLASSES)]``. It is packed
by :func:`compose_image_meta` and read only through the named slices below
(:func:`parse_image_meta` for NumPy, :func:`parse_image_meta_graph` for tensors).
"""

import cv2
import numpy as np

RESIZE_MODES = ("none", "square", "pad64", "crop")

# Where each field sits in the image meta vector ([..., META] arrays or tensors).
META_IMAGE_ID = 0
META_ORIGINAL_SHAPE = slice(1, 4)
META_IMAGE_SHAPE = slice(4, 7)
META_IMAGE_HW = slice(4, 6)          # height and width of the molded (padded) image
META_WINDOW = slice(7, 11)
META_SCALE = 11
META_ACTIVE_CLASS_IDS = slice(12, None)


def image_meta_size(num_classes):
    """Length of the image meta vector for ``num_classes`` classes (background included)."""
    return 12 + int(num_classes)


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


def rule_scale(h, w, min_dim, min_scale):
    """Matterport's resize factor for an h x w image: enough for the short side to reach
    ``min_dim`` (never below 1), and at least ``min_scale`` (either may be 0/None: no rule).
    The ``crop`` and ``pad64`` modes use it as is; ``square`` then caps it by max_dim."""
    scale = max(1.0, min_dim / min(h, w)) if min_dim else 1.0
    if min_scale and scale < min_scale:
        scale = float(min_scale)
    return scale


def choose_crop(image_shape, min_dim, min_scale, rng=None, scale_jitter=None, scale=None):
    """The random window of the ``crop`` mode, in original-image pixels.

    The scale is ``scale`` when given (object-size normalisation), else Matterport's (short
    side >= min_dim, at least min_scale), times a factor
    drawn log-uniformly from ``scale_jitter`` = (low, high) when given (scale augmentation:
    objects are seen at sizes around the inference scale); the window is a square of
    ceil(min_dim / scale) original pixels, which may run past the bottom/right edge of a
    smaller image (that part is zero padding).

    Returns:
        y, x, side (ints).
    """
    rng = rng if rng is not None else np.random
    h, w = image_shape[:2]
    if scale is None:
        scale = rule_scale(h, w, min_dim, min_scale)
    if scale_jitter:
        low, high = (float(v) for v in scale_jitter)
        scale *= float(np.exp(rng.uniform(np.log(low), np.log(high))))
    side = max(1, int(np.ceil(min_dim / scale)))
    y = int(rng.randint(0, max(h, side) - side + 1))
    x = int(rng.randint(0, max(w, side) - side + 1))
    return y, x, side


def cut_window(array, y, x, side):
    """array[y:y + side, x:x + side], zero-padded at the bottom/right to [side, side, ...]."""
    out = array[y:y + side, x:x + side]
    pad = [(0, side - out.shape[0]), (0, side - out.shape[1])] + [(0, 0)] * (out.ndim - 2)
    return np.pad(out, pad) if pad[0][1] or pad[1][1] else out


def resize_image(image, min_dim=None, max_dim=None, min_scale=None, mode="square", rng=None,
                 scale=None):
    """Resize an image [H, W, C] keeping its aspect ratio, then pad or crop.

    Modes: ``none`` (unchanged), ``square`` (scale so the short side is >= min_dim and the long
    side <= max_dim, pad to max_dim x max_dim), ``pad64`` (scale by min_dim/min_scale, pad each
    side up to a multiple of 64; ``scale``, when given, replaces that rule), ``crop`` (a random
    window of the image, :func:`choose_crop`, scaled to min_dim x min_dim).

    Returns:
        image: resized image, same dtype.
        window: (y1, x1, y2, x2) pixels of the real image inside the padded one.
        scale: the factor applied.
        padding: [(top, bottom), (left, right), (0, 0)].
        crop: (y, x, side, side) of the window in original-image pixels in ``crop`` mode,
            else None.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown IMAGE_RESIZE_MODE {mode!r}; use one of {RESIZE_MODES}")
    image_dtype = image.dtype
    h, w = image.shape[:2]
    window = (0, 0, h, w)
    fixed_scale = scale if mode == "pad64" else None
    scale = 1.0
    padding = [(0, 0), (0, 0), (0, 0)]
    crop = None
    if mode == "none":
        return image, window, scale, padding, crop
    if mode == "crop":
        y, x, side = choose_crop(image.shape, min_dim, min_scale, rng)
        image = resize_array(cut_window(image, y, x, side), (min_dim, min_dim)).astype(image_dtype)
        return image, (0, 0, min_dim, min_dim), min_dim / side, padding, (y, x, side, side)

    scale = float(fixed_scale) if fixed_scale else rule_scale(h, w, min_dim, min_scale)
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
    return image, window, scale, padding, crop


def resize_mask(mask, scale, padding, crop=None):
    """Apply :func:`resize_image`'s scale, padding and crop to masks [H, W, N] -> bool."""
    mask = np.asarray(mask)
    if crop is not None:
        y, x, side, _ = crop
        mask = cut_window(mask, y, x, side)
    if mask.shape[-1] == 0:
        h, w = mask.shape[:2]
        h, w = round(h * scale), round(w * scale)
        out = np.zeros((h, w, 0), dtype=bool)
    elif scale != 1:
        out = resize_array(mask.astype(bool), (round(mask.shape[0] * scale),
                           round(mask.shape[1] * scale)), nearest=True)
    else:
        out = mask.astype(bool)
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


def parse_image_meta_graph(meta):
    """Unpack image meta [B, META] (a tensor, or an array) into a dict of slices, unconverted:
    image_id [B], original_image_shape [B, 3], image_shape [B, 3], image_hw [B, 2] (molded
    image), window [B, 4] (pixels of the molded image), scale [B], active_class_ids [B, C]."""
    return {
        "image_id": meta[:, META_IMAGE_ID],
        "original_image_shape": meta[:, META_ORIGINAL_SHAPE],
        "image_shape": meta[:, META_IMAGE_SHAPE],
        "image_hw": meta[:, META_IMAGE_HW],
        "window": meta[:, META_WINDOW],
        "scale": meta[:, META_SCALE],
        "active_class_ids": meta[:, META_ACTIVE_CLASS_IDS],
    }


def parse_image_meta(meta):
    """Unpack a batch of image meta [B, META] into a dict of NumPy arrays (ints where ints)."""
    parts = parse_image_meta_graph(np.asarray(meta))
    return {k: v.astype(np.float32 if k == "scale" else np.int32) for k, v in parts.items()}


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


IMAGE_NORMALIZATIONS = (None, "stretch", "clahe", "nuclei", "nuclei_stain")
# "clahe": contrast-limited adaptive histogram equalisation (Zuiderveld 1994) with the usual
# settings (OpenCV's and scikit-image's defaults): an 8 x 8 grid of tiles over the image and a
# clip limit of 2 (each tile's histogram bins capped at twice their mean count).
CLAHE_GRID = 8
CLAHE_CLIP_LIMIT = 2.0

# Stain optical-density vectors of haematoxylin, eosin and DAB in RGB (Ruifrok & Johnston,
# "Quantification of histochemical staining by color deconvolution", 2001), rows normalised;
# column 0 of the inverse turns a pixel's optical density into its haematoxylin amount.
_RAW_STAIN_VECTORS = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
STAIN_VECTORS = _RAW_STAIN_VECTORS / np.linalg.norm(_RAW_STAIN_VECTORS, axis=1, keepdims=True)
HAEMATOXYLIN_FROM_OD = np.linalg.inv(STAIN_VECTORS)[:, 0]
# A colour image deviates from its own grey by more than this (colour_deviation, grey
# levels): stained histology; fluorescence and brightfield images stay well below it.
STAIN_COLOUR_THRESHOLD = 5.0
# The smallest haematoxylin spread (optical density) stretched to the full 0..255; an image
# with less stain is stretched by at most 255 / this (the grey path's floor is 1 grey level).
HAEMATOXYLIN_MIN_RANGE = 0.05
# Images with more pixels than this take their normalisation statistics (percentiles, median,
# colour deviation) from every 4th row and column.
STATISTICS_MAX_PIXELS = 1 << 16


def statistics_step(image):
    """4 when the image [H, W, ...] has more than STATISTICS_MAX_PIXELS pixels (its statistics
    are taken from every 4th row and column), else 1. TensorFlow twin:
    ``mrcnn.export._statistics_step``."""
    return 4 if image.shape[0] * image.shape[1] > STATISTICS_MAX_PIXELS else 1


def colour_deviation(rgb):
    """Mean absolute difference between each channel and the pixel's grey, over float
    [H, W, 3]: 0 for a grey image, about 15-35 for DSB2018's stained histology."""
    return float(np.abs(rgb - rgb.mean(axis=-1, keepdims=True)).mean())


def is_colour(image):
    """Whether an image [H, W, C] has colour: C >= 3 and :func:`colour_deviation` of its first
    three channels above STAIN_COLOUR_THRESHOLD (statistics from every 4th row and column of
    an image of more than STATISTICS_MAX_PIXELS pixels)."""
    if image.ndim != 3 or image.shape[-1] < 3:
        return False
    step = statistics_step(image)
    return colour_deviation(image[::step, ::step, :3].astype(np.float32)) > \
        STAIN_COLOUR_THRESHOLD


def is_stained_colour(image):
    """Whether a uint8 image [H, W, C>=3] looks like stained histology: colour
    (:func:`is_colour`) on a bright background (median grey above mid-grey, from the same
    every-4th-pixel sample of a large image)."""
    if not is_colour(image):
        return False
    step = statistics_step(image)
    return bool(np.median(image[::step, ::step, :3].astype(np.float32).mean(axis=-1)) > 127.5)


def scale_stains(image, haematoxylin=1.0, eosin=1.0):
    """A stained colour image as if it held ``haematoxylin`` and ``eosin`` times as much of
    each stain (colour deconvolution with STAIN_VECTORS: optical density
    -log((I + 1) / 256) split into the haematoxylin, eosin and DAB amounts, those scaled, and
    the colour recomposed), as another lab's staining might look. Other images (grey, dark
    background: see :func:`is_stained_colour`) and channels past the third are unchanged.

    Args:
        image: uint8 [H, W, C].
    Returns:
        uint8 [H, W, C].
    """
    if image.dtype != np.uint8:
        raise ValueError(f"scale_stains needs a uint8 image, got {image.dtype}")
    if (haematoxylin, eosin) == (1.0, 1.0) or not is_stained_colour(image):
        return image
    density = -np.log((image[..., :3].astype(np.float64) + 1.0) / 256.0)
    amounts = density @ np.linalg.inv(STAIN_VECTORS)
    amounts *= np.array([haematoxylin, eosin, 1.0])
    recomposed = 256.0 * np.exp(-(amounts @ STAIN_VECTORS)) - 1.0
    out = image.copy()
    out[..., :3] = np.clip(np.round(recomposed), 0, 255).astype(np.uint8)
    return out


def _stretch(values, sample, min_range):
    """Percentile stretch (1st -> 0, 99.8th -> 255 of ``sample``; a spread below
    ``min_range`` is not amplified beyond it) to uint8."""
    low, high = np.percentile(sample, (1.0, 99.8))
    stretched = (values - low) * (255.0 / max(float(high - low), min_range))
    return np.clip(stretched, 0, 255).astype(np.uint8)


def _equalise_lightness(image):
    """CLAHE (CLAHE_GRID, CLAHE_CLIP_LIMIT) on the lightness of a uint8 image [H, W] or
    [H, W, C]: on the grey level when its first three channels are equal (or it has fewer),
    else on the L of CIELAB, colour kept; channels past the third unchanged."""
    clahe = cv2.createCLAHE(clipLimit=CLAHE_CLIP_LIMIT, tileGridSize=(CLAHE_GRID, CLAHE_GRID))
    if image.ndim == 2:
        return clahe.apply(np.ascontiguousarray(image))
    out = image.copy()
    rgb = np.ascontiguousarray(image[..., :3])
    if rgb.shape[-1] < 3 or (np.array_equal(rgb[..., 0], rgb[..., 1])
                             and np.array_equal(rgb[..., 0], rgb[..., 2])):
        out[..., :3] = clahe.apply(np.ascontiguousarray(rgb[..., 0]))[..., None]
        return out
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    lab[..., 0] = clahe.apply(np.ascontiguousarray(lab[..., 0]))
    out[..., :3] = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    return out


def normalize_image(image, mode):
    """Per-image intensity normalisation of a whole uint8 image [H, W, C], before any resize
    or crop (so a training crop and the whole image at inference agree).

    Modes:
        None: unchanged.
        "stretch": colour kept; every channel mapped by the same linear stretch, so that the
            1st and 99.8th percentiles of all the image's channel values become 0 and 255.
            Dim exposures (a fluorescence image whose brightest nucleus is 60 of 255) and
            washed-out ones look alike to the network; hues are unchanged.
        "clahe": "stretch", then local contrast equalised on the lightness (CLAHE,
            CLAHE_GRID x CLAHE_GRID tiles, CLAHE_CLIP_LIMIT): a grey image's grey channel, a
            colour image's L of CIELAB (hue kept). Faint nuclei beside dark ones (out of focus
            in histology, dim regions of a fluorescence field) gain contrast.
        "nuclei": grayscale, inverted when the background is bright (median above mid-grey:
            brightfield and H&E histology, where nuclei are dark), then stretched so the 1st
            and 99.8th percentiles become 0 and 255 (StarDist's normalisation). Every image
            kind then shows bright nuclei on a dark background, so what the network learns
            on the many fluorescence images carries over to the rare kinds.
        "nuclei_stain": as "nuclei", except for stained colour images (colourful, see
            STAIN_COLOUR_THRESHOLD, on a bright background): there the haematoxylin amount
            from colour deconvolution (optical density -log((I + 1) / 256) times
            HAEMATOXYLIN_FROM_OD) is stretched instead of the inverted grey, so eosin-stained
            tissue, dark in grey, stays dark while the nuclei turn bright.

    Returns:
        uint8 [H, W, C], every channel equal under both "nuclei" modes.
    """
    if mode is None:
        return image
    if mode not in IMAGE_NORMALIZATIONS:
        raise ValueError(f"unknown image normalisation {mode!r}; use one of "
                         f"{IMAGE_NORMALIZATIONS}")
    step = statistics_step(image)
    if mode in ("stretch", "clahe"):
        sample = image[::step, ::step, :3] if image.ndim == 3 else image[::step, ::step]
        out = _stretch(image.astype(np.float32), sample, 1.0)
        return _equalise_lightness(out) if mode == "clahe" else out
    rgb = image[..., :3].astype(np.float32) if image.ndim == 3 \
        else image.astype(np.float32)[..., None]
    gray = rgb.mean(axis=-1)
    sample = gray[::step, ::step]
    bright_background = np.median(sample) > 127.5
    if mode == "nuclei_stain" and bright_background and is_colour(image):
        haematoxylin = -np.log((rgb + 1.0) / 256.0) @ HAEMATOXYLIN_FROM_OD.astype(np.float32)
        out = _stretch(haematoxylin, haematoxylin[::step, ::step], HAEMATOXYLIN_MIN_RANGE)
    else:
        if bright_background:
            gray, sample = 255.0 - gray, 255.0 - sample
        out = _stretch(gray, sample, 1.0)
    channels = image.shape[-1] if image.ndim == 3 else 1
    return np.repeat(out[..., None], channels, axis=-1)
