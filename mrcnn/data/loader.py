"""Load one training example: image, meta, class ids, boxes and (mini-)masks."""

import numpy as np

from mrcnn.data.augment import apply_augmentation
from mrcnn.data.copy_paste import paste_objects
from mrcnn.ops.boxes import extract_bboxes, instance_planes
from mrcnn.ops.image import (choose_crop, compose_image_meta, cut_window, normalize_image,
                             resize_array, resize_image, resize_mask)
from mrcnn.ops.masks import minimize_mask


def check_mask(dataset, image_id, image, mask, class_ids, source="load_mask"):
    """Raise ValueError naming the image when masks and image (or the image window they were
    cut for) disagree. ``source`` is the Dataset method that returned them."""
    mask = np.asarray(mask)
    class_ids = np.asarray(class_ids)
    ref = dataset.image_reference(image_id)
    if mask.ndim != 3:
        raise ValueError(f"{ref}: {source} returned masks of shape {mask.shape}; "
                         "expected [H, W, N].")
    if mask.shape[:2] != image.shape[:2]:
        raise ValueError(f"{ref}: {source} returned mask size {mask.shape[:2]}, which "
                         f"differs from the image size {image.shape[:2]}.")
    if len(class_ids) != mask.shape[-1]:
        raise ValueError(f"{ref}: {mask.shape[-1]} masks but {len(class_ids)} class ids.")


def resize_crop(image, mask, class_ids, min_dim):
    """A cut window [side, side] -> image [min_dim, min_dim, C], masks [min_dim, min_dim, N']
    bool of the instances present in it, their class_ids, window (0, 0, min_dim, min_dim) and
    scale (min_dim / side)."""
    side = image.shape[0]
    kept = np.flatnonzero(instance_planes(mask).any(axis=(1, 2)))
    mask, class_ids = mask[:, :, kept], np.asarray(class_ids)[kept]
    if side != min_dim:
        image = resize_array(image, (min_dim, min_dim)).astype(image.dtype)
        if mask.shape[-1]:
            mask = resize_array(mask, (min_dim, min_dim), nearest=True)
        else:
            mask = np.zeros((min_dim, min_dim, 0), bool)
    return image, mask, class_ids, (0, 0, min_dim, min_dim), min_dim / side


def crop_then_resize(image, mask, class_ids, min_dim, min_scale, rng=None):
    """``crop`` mode done cheaply: cut the random window (:func:`choose_crop`) from the
    original image and masks first, then scale only that window to min_dim x min_dim.
    Instances absent from the window are dropped.

    Returns:
        image [min_dim, min_dim, C], masks [min_dim, min_dim, N'] bool, class_ids [N'],
        window (0, 0, min_dim, min_dim), scale (min_dim / window side).
    """
    y, x, side = choose_crop(image.shape, min_dim, min_scale, rng)
    return resize_crop(cut_window(image, y, x, side), cut_window(mask, y, x, side), class_ids,
                       min_dim)


def _load_crop(dataset, config, image_id, image, rng):
    """The crop mode: the dataset's windowed masks when it has them, else the full masks."""
    y, x, side = choose_crop(image.shape, config.IMAGE_MIN_DIM, config.IMAGE_MIN_SCALE, rng,
                             config.IMAGE_SCALE_JITTER, object_scale(dataset, config, image_id))
    windowed = dataset.load_mask_window(image_id, y, x, side, side)
    if windowed is None:
        mask, class_ids = load_full_masks(dataset, image_id, image)
        mask = cut_window(mask, y, x, side)
    else:
        mask, class_ids = np.asarray(windowed[0]), windowed[1]
        check_mask(dataset, image_id, image[y:y + side, x:x + side], mask, class_ids,
                   source="load_mask_window")
        mask = cut_window(mask.astype(bool, copy=False), 0, 0, side)
    return resize_crop(cut_window(image, y, x, side), mask, class_ids, config.IMAGE_MIN_DIM)


def object_scale(dataset, config, image_id):
    """The training scale that brings the image's median object to OBJECT_SIZE_TARGET
    model-input pixels, clipped to OBJECT_SCALE_RANGE; None when the option is off or the
    image has no objects (the usual scale then applies)."""
    target = config.OBJECT_SIZE_TARGET
    size = dataset.object_size(image_id) if target else None
    if not size:
        return None
    low, high = config.OBJECT_SCALE_RANGE
    return float(np.clip(target / size, low, high))


def load_full_masks(dataset, image_id, image):
    """``dataset.load_mask`` checked against ``image`` (:func:`check_mask`), with an empty
    result as [H, W, 0] masks of the image's size.

    Returns:
        masks [H, W, N] bool-like, class ids [N].
    """
    mask, class_ids = dataset.load_mask(image_id)
    mask = np.asarray(mask)
    if mask.size == 0 and mask.shape[-1] == 0:
        mask = np.zeros(image.shape[:2] + (0,), dtype=bool)
    check_mask(dataset, image_id, image, mask, class_ids)
    return mask, class_ids


def load_normalized_image(dataset, config, image_id):
    """``dataset.load_image(image_id)`` normalised by IMAGE_NORMALIZATION: [H, W, C] uint8."""
    return normalize_image(dataset.load_image(image_id), config.IMAGE_NORMALIZATION)


def load_image_gt(dataset, config, image_id, augmentation=None, rng=None, mode=None,
                  image=None):
    """Load and resize an image with its ground truth.

    Args:
        dataset: a prepared :class:`mrcnn.data.dataset.Dataset`.
        config: Config (IMAGE_* fields, USE_MINI_MASK, MINI_MASK_SHAPE, NUM_CLASSES).
        image_id: internal image index.
        augmentation: see :mod:`mrcnn.data.augment`; applied after resizing.
        rng: numpy RandomState for the crop position (and COPY_PASTE_PROBABILITY's draws).
        mode: resize mode override (defaults to config.IMAGE_RESIZE_MODE).
        image: the image already loaded and normalised (IMAGE_NORMALIZATION), e.g. from a
            cache; by default :func:`load_normalized_image`. Not modified.

    Returns:
        image [H, W, C] uint8, image_meta [META], class_ids [N] int32, bbox [N, 4] pixels
        int32, mask [h, w, N] bool (mini-masks if USE_MINI_MASK, else image-sized). Instances
        that vanish after cropping or augmentation are dropped; N may be 0.
    """
    if image is None:
        image = load_normalized_image(dataset, config, image_id)
    original_shape = image.shape
    if (mode or config.IMAGE_RESIZE_MODE) == "crop":
        whole = image
        image, mask, class_ids, window, scale = _load_crop(dataset, config, image_id, whole,
                                                           rng)
        if config.COPY_PASTE_PROBABILITY and \
                (rng if rng is not None else np.random).uniform() < config.COPY_PASTE_PROBABILITY:
            source = _load_crop(dataset, config, image_id, whole, rng)
            image, mask, class_ids = paste_objects(image, mask, class_ids, *source[:3],
                                                   margin=config.COPY_PASTE_MARGIN, rng=rng)
    else:
        mask, class_ids = load_full_masks(dataset, image_id, image)
        image, window, scale, padding, crop = resize_image(
            image, min_dim=config.IMAGE_MIN_DIM, max_dim=config.IMAGE_MAX_DIM,
            min_scale=config.IMAGE_MIN_SCALE, mode=mode or config.IMAGE_RESIZE_MODE, rng=rng)
        mask = resize_mask(mask, scale, padding, crop)
    if not image.flags.writeable:       # a window of a cached image: augmenters may write
        image = image.copy()
    if augmentation is not None:
        image, mask = apply_augmentation(augmentation, image, mask)

    bbox = extract_bboxes(mask)
    keep = np.flatnonzero(bbox[:, 2] > bbox[:, 0])      # instances still present
    if len(keep) < mask.shape[-1]:
        mask = mask[:, :, keep]
    class_ids = np.asarray(class_ids, dtype=np.int32)[keep]
    bbox = bbox[keep]

    active_class_ids = np.zeros([dataset.num_classes], dtype=np.int32)
    source = dataset.image_info[image_id]["source"]
    active_class_ids[dataset.source_class_ids[source]] = 1
    if config.USE_MINI_MASK:
        mask = minimize_mask(bbox, mask, config.MINI_MASK_SHAPE)
    image_meta = compose_image_meta(image_id, original_shape, image.shape, window, scale,
                                    active_class_ids)
    return image, image_meta, class_ids, bbox, mask
