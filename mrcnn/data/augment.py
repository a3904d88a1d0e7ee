"""Augmentation hook that keeps instance masks aligned with the image.

Accepted augmenters:
  * an albumentations transform (``A.Compose([...])`` or a single transform),
  * an imgaug augmenter (imgaug 0.4 does not import on NumPy 2; if it cannot be used here the
    error says so and points to albumentations),
  * any callable ``fn(image, masks) -> (image, masks)``.
Augmentations must not change the image size (crop/pad before, not inside, the hook).
"""

import numpy as np

# imgaug augmenters that must not touch masks (Matterport's nucleus list).
_IMGAUG_MASK_SAFE = ["Sequential", "SomeOf", "OneOf", "Sometimes", "Fliplr", "Flipud",
                     "CropAndPad", "Affine", "PiecewiseAffine", "Rot90"]


def _is_albumentations(aug):
    module = type(aug).__module__
    return module.startswith("albumentations")


def _is_imgaug(aug):
    return hasattr(aug, "to_deterministic") and hasattr(aug, "augment_image")


def apply_augmentation(augmentation, image, mask):
    """Augment image [H, W, C] uint8 and masks [H, W, N] bool together.

    Returns:
        (image, mask) of unchanged shapes; mask stays bool.

    Raises:
        ValueError: the augmenter changed the image shape, or is of an unknown kind.
    """
    shape, mask_shape = image.shape, mask.shape
    if _is_albumentations(augmentation):
        image, mask = _apply_albumentations(augmentation, image, mask)
    elif _is_imgaug(augmentation):
        image, mask = _apply_imgaug(augmentation, image, mask)
    elif callable(augmentation):
        image, mask = augmentation(image, mask)
        mask = np.asarray(mask).astype(bool)
    else:
        raise ValueError(f"augmentation {augmentation!r} is neither an albumentations "
                         "transform, an imgaug augmenter nor a callable(image, masks).")
    if image.shape != shape or mask.shape != mask_shape:
        raise ValueError(f"augmentation changed the shapes: image {shape} -> {image.shape}, "
                         f"masks {mask_shape} -> {mask.shape}; size-changing transforms are "
                         "not supported inside the hook.")
    return image, mask


def _apply_albumentations(augmentation, image, mask):
    """Masks travel as one label image when they do not overlap (OpenCV handles at most 512
    channels, and one channel is fastest), else as a list of 2-D masks."""
    count = mask.shape[-1]
    if count == 0:
        return augmentation(image=image)["image"], mask
    if count < 65535:
        # Instances as rows [N, H * W]: summing over them is then a few fast row additions
        # (0.5 ms instead of 2.8 ms for 20 nuclei in a 256 px crop).
        rows = np.ascontiguousarray(mask.reshape(-1, count).T, dtype=bool).view(np.uint8)
        if rows.sum(axis=0, dtype=np.uint16).max() <= 1:
            ids = np.arange(1, count + 1, dtype=np.uint16)
            labels = (rows * ids[:, None]).sum(axis=0, dtype=np.uint16)
            out = augmentation(image=image, mask=labels.reshape(mask.shape[:2]))
            return out["image"], np.asarray(out["mask"])[..., None] == ids
    out = augmentation(image=image, masks=[m for m in mask.astype(np.uint8).transpose(2, 0, 1)])
    return out["image"], np.stack([np.asarray(m) for m in out["masks"]], axis=-1).astype(bool)


def _apply_imgaug(augmentation, image, mask):
    try:
        import imgaug  # noqa: F401
    except Exception as err:
        raise RuntimeError(
            "an imgaug augmenter was passed but imgaug cannot be imported here "
            f"({type(err).__name__}: {err}); imgaug 0.4 does not work with NumPy 2. Install "
            "the maintained fork with pip install -e \".[imgaug]\", or use an albumentations "
            "transform (see mrcnn.data.augment.default_augmentation).") from err

    def hook(images, augmenter, parents, default):
        return augmenter.__class__.__name__ in _IMGAUG_MASK_SAFE

    det = augmentation.to_deterministic()
    image = det.augment_image(image)
    import imgaug
    mask = det.augment_image(mask.astype(np.uint8), hooks=imgaug.HooksImages(activator=hook))
    return image, mask.astype(bool)


def default_augmentation(seed=None):
    """Two of Matterport's five nucleus augmenters on every crop: flips, 90/180/270 rotation,
    brightness x0.8-1.5, Gaussian blur (:func:`_nucleus_ops`). Matterport's sample draws none,
    one or two of them (:func:`matterport_augmentation`, ``--augment matterport``); in two
    seeded pairs (docs/results.md) that scored the same on val (+0.002 +- 0.003 DSB per image,
    pooled), better on the training images it fitted (+0.007 +- 0.003) and worse on blurred val
    images (-0.007 +- 0.004), so two on every crop stays the default."""
    import albumentations as A
    return A.Compose([_some_nucleus_ops(2)], seed=seed)


def matterport_augmentation(seed=None):
    """Matterport's nucleus augmentation as its imgaug ``SomeOf((0, 2), ...)`` draws it: none,
    one or two (each count a third of the time) of :func:`_nucleus_ops`, so a third of the
    crops go in unchanged."""
    import albumentations as A
    return A.Compose([A.OneOf([A.NoOp(p=1.0), _some_nucleus_ops(1), _some_nucleus_ops(2)],
                              p=1.0)], seed=seed)


def _nucleus_ops():
    """Fresh instances of Matterport's five nucleus augmenters, each applied when drawn."""
    import albumentations as A
    return [A.HorizontalFlip(p=1.0), A.VerticalFlip(p=1.0), A.RandomRotate90(p=1.0),
            A.MultiplicativeNoise(multiplier=(0.8, 1.5), per_channel=False, elementwise=False,
                                  p=1.0),
            A.GaussianBlur(sigma_limit=(0.0, 5.0), p=1.0)]


def _some_nucleus_ops(n):
    """``n`` different ones of :func:`_nucleus_ops` on every crop."""
    import albumentations as A
    return A.SomeOf(_nucleus_ops(), n=n, replace=False, p=1.0)


def colour_augmentation(seed=None):
    """The default augmentation (two of Matterport's five augmenters), then, on half of the
    crops, one colour change that keeps the RGB input: channel shuffle, inversion (dark nuclei on
    a bright background become bright on dark, so fluorescence and brightfield images teach each
    other), grey, or a hue/saturation shift (other stains). Masks are untouched by the colour
    step; image and masks keep their shapes."""
    import albumentations as A
    colour = [A.ChannelShuffle(p=1.0), A.InvertImg(p=1.0), A.ToGray(p=1.0),
              A.HueSaturationValue(hue_shift_limit=20, sat_shift_limit=30, val_shift_limit=0,
                                   p=1.0)]
    return A.Compose([_some_nucleus_ops(2), A.OneOf(colour, p=0.5)], seed=seed)


# The command line's --augment choices.
AUGMENTATIONS = {"default": default_augmentation, "matterport": matterport_augmentation,
                 "colour": colour_augmentation, "none": None}


def make_augmentation(name, seed=None):
    """The augmentation called ``name`` in :data:`AUGMENTATIONS` (None for "none")."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; use one of {sorted(AUGMENTATIONS)}")
    factory = AUGMENTATIONS[name]
    return factory(seed=seed) if factory else None
