"""Nuclei configs and the DSB2018-layout dataset (``<subset>/<id>/images/<id>.png`` and
``<id>/masks/*.png``), following Matterport's nucleus sample."""

import logging
import os

import numpy as np

from mrcnn.config import Config
from mrcnn.data.dataset import Dataset, median_diameter, read_image_file
from mrcnn.ops.image import STAIN_COLOUR_THRESHOLD, colour_deviation

log = logging.getLogger("nucleus")

# What load_nucleus does with an image whose masks/ folder is missing or empty.
UNLABELLED = ("allow", "error", "skip")


class NucleusConfig(Config):
    """Matterport's nucleus training defaults: 512 crops, scale >= 2, anchors 8-128."""

    NAME = "nucleus"
    IMAGES_PER_GPU = 1
    NUM_CLASSES = 2
    STEPS_PER_EPOCH = 100
    VALIDATION_STEPS = 10
    # The 10 validation steps took 1.5 s of a 35 s epoch (AMD EPYC family 26, float32): at
    # every 5th epoch a time budget trains about 3 % more epochs.
    VALIDATION_EVERY_N_EPOCHS = 5
    DETECTION_MIN_CONFIDENCE = 0
    BACKBONE = "resnet50"
    IMAGE_RESIZE_MODE = "crop"
    IMAGE_MIN_DIM = 512
    IMAGE_MAX_DIM = 512
    IMAGE_MIN_SCALE = 2.0
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    POST_NMS_ROIS_TRAINING = 1000
    # 500 proposals, not Matterport's 2000: the box head classifies a quarter of the ROIs. 2000
    # -> 1000 on an early model's val images: DSB 0.4928 vs 0.4925, detect 0.60 vs 0.49 s per
    # image (float32, 2-core Intel Xeon). 1000 -> 500 on all 506 training images (session 50):
    # DSB +0.0001 +- 0.0002 per image (73-epoch model), detect 5 % faster in float32 and 9 % in
    # bfloat16 (median per-image ratios 0.945-0.952 and 0.907 over the val images, Intel Xeon
    # with AMX); still more than DETECTION_MAX_INSTANCES (docs/results.md).
    POST_NMS_ROIS_INFERENCE = 500
    RPN_NMS_THRESHOLD = 0.9
    RPN_TRAIN_ANCHORS_PER_IMAGE = 64
    TRAIN_ROIS_PER_IMAGE = 128
    MAX_GT_INSTANCES = 200
    DETECTION_MAX_INSTANCES = 400
    MEAN_PIXEL = np.array([43.53, 39.56, 48.22])
    USE_MINI_MASK = True
    MINI_MASK_SHAPE = (56, 56)
    PRE_NMS_LIMIT = 6000
    RPN_CONV_CHANNELS = 256
    # bfloat16 convolutions where they are faster than float32 (mrcnn.precision: AMD CPUs with
    # AVX512-BF16, CPUs with AMX, GPUs >= 8.0), float16 on 7.x GPUs, float32 elsewhere.
    # Measured, 60 min from scratch on the 2-core AMD AVX512-BF16 machine: 56 epochs instead
    # of 44, DSB 0.509 instead of 0.504, and 0.37-0.49 s instead of 0.66 s per validation image.
    COMPUTE_DTYPE = "auto"
    # TensorBoard: DSB score, AP50 and mask overlays on 4 validation images every 10 epochs.
    EVAL_EVERY_N_EPOCHS = 10
    EVAL_IMAGES = 4


class NucleusInferenceConfig(NucleusConfig):
    """Whole images padded to multiples of 64, scaled x2 as in training."""

    IMAGES_PER_GPU = 1
    IMAGE_RESIZE_MODE = "pad64"
    RPN_NMS_THRESHOLD = 0.7
    # The DSB score counts every false positive: keep confident detections only (Matterport's
    # general default; measured +0.02 DSB score over 0.5 on our DSB2018 val split).
    DETECTION_MIN_CONFIDENCE = 0.7
    # Mask probabilities above 0.45, not 0.5, make a nucleus's pixels: chosen on all 506
    # training images (benchmarks/threshold_sweep.py) of two 60-minute models, +0.0040 +-
    # 0.0006 and +0.0028 +- 0.0006 DSB per image over 0.5, no image kind worse (docs/results.md).
    DETECTION_MASK_THRESHOLD = 0.45
    # A detection more than 20 % covered by higher-scored ones is dropped (a duplicate or a
    # fragment of a neighbour; once overlaps are removed the DSB score counts it as a false
    # positive). Chosen on all 506 training images of two 60-minute models: +0.0028 +- 0.0005
    # and +0.0021 +- 0.0005 DSB per image over keeping them, every kind better (docs/results.md).
    DETECTION_MAX_COVERED_FRACTION = 0.2
    # A detection left with fewer than 20 pixels (of the original image) outside the masks of
    # higher-scored ones is dropped: a speck the DSB score counts as a false positive. Chosen on
    # all 506 training images of two 60-minute models among 10-60 px: +0.0019 +- 0.0006 and
    # +0.0034 +- 0.0009 DSB per image, 16 and 26 images better, 2 and 1 worse, no kind worse;
    # 30 px gained as much on average but made 31 and 41 images worse, and 40 px or more lost
    # (docs/results.md). In pixels of the original image, so it assumes DSB-like magnifications.
    DETECTION_MIN_MASK_AREA = 20
    # Mask probabilities in [0.25, 0.6) are decided by the image: such a pixel belongs to the
    # nucleus when it lies on the nucleus's side of the Otsu split of the box's grey levels (the
    # box grown by 10 px), on grey images (fluorescence, brightfield; stained colour images keep
    # their masks). Chosen on all 506 training images of two 60-minute models: +0.0163 and
    # +0.0159 DSB per image over the plain masks, fluorescence and brightfield both better; on
    # val +0.016 and +0.015 (docs/results.md). A few ms per image.
    DETECTION_MASK_INTENSITY_BAND = (0.25, 0.6)


# What inference changes beyond mrcnn.config.inference_config's generic rules (one image, whole
# images): the command line derives its inference configs with these.
INFERENCE_FIELDS = {"RPN_NMS_THRESHOLD": NucleusInferenceConfig.RPN_NMS_THRESHOLD,
                    "DETECTION_MIN_CONFIDENCE": NucleusInferenceConfig.DETECTION_MIN_CONFIDENCE,
                    "DETECTION_MASK_THRESHOLD": NucleusInferenceConfig.DETECTION_MASK_THRESHOLD,
                    "DETECTION_MAX_COVERED_FRACTION":
                        NucleusInferenceConfig.DETECTION_MAX_COVERED_FRACTION,
                    "DETECTION_MIN_MASK_AREA": NucleusInferenceConfig.DETECTION_MIN_MASK_AREA,
                    "DETECTION_MASK_INTENSITY_BAND":
                        NucleusInferenceConfig.DETECTION_MASK_INTENSITY_BAND}


def image_kind(image):
    """'histology' (colour), 'brightfield' (light background) or 'fluorescence' (dark)."""
    rgb = image[..., :3].astype(np.float32)
    if colour_deviation(rgb) > STAIN_COLOUR_THRESHOLD:
        return "histology"
    return "brightfield" if np.median(rgb) > 127 else "fluorescence"


_KIND_OF_FILE = {}


def kind_of_file(path):
    """:func:`image_kind` of the image file at ``path``, remembered per process while the file
    is unchanged (a train and a val split of the same folder read each image once).

    Raises:
        ValueError: the file cannot be read as an image (the message names it).
    """
    stat = os.stat(path) if os.path.exists(path) else None   # missing: read_image_file says so
    key = (os.path.abspath(path), stat and stat.st_mtime_ns, stat and stat.st_size)
    if key not in _KIND_OF_FILE:
        _KIND_OF_FILE[key] = image_kind(read_image_file(path))
    return _KIND_OF_FILE[key]


def split_ids(dataset_dir, ids, val_fraction=0.1):
    """Deterministic train/val split stratified by image kind (every k-th id of each kind,
    in sorted order, goes to val; a kind too small for that gives its middle image)."""
    by_kind = {}
    for image_id in sorted(ids):
        path = os.path.join(dataset_dir, image_id, "images", image_id + ".png")
        try:
            by_kind.setdefault(kind_of_file(path), []).append(image_id)
        except ValueError as err:  # kept in train, where loading skips it with this message
            log.warning("cannot classify %s for the train/val split: %s", path, err)
    step = max(2, int(round(1 / val_fraction)))
    val = set()
    for members in by_kind.values():
        chosen = members[step // 2::step]
        if not chosen and len(members) >= 2:  # small datasets: still one val image per kind
            chosen = [members[len(members) // 2]]
        val.update(chosen)
    return sorted(set(ids) - val), sorted(val)


def set_kind_repeat_factors(dataset, threshold=0.5):
    """Oversample rare image kinds: repeat-factor sampling (Gupta et al., LVIS 2019) over the
    kinds of :func:`image_kind` instead of classes.

    Each image gets ``repeat_factor = max(1, sqrt(threshold / f))``, f the fraction of the
    dataset's images of its kind, which :class:`mrcnn.data.generator.DataGenerator` uses. With
    DSB2018's stage1_train (about 82 % fluorescence, 16 % histology, 3 % brightfield) and
    threshold 0.5: factors 1, 1.8 and 4.2, so a training epoch is about 67 % fluorescence,
    23 % histology and 10 % brightfield.

    Returns:
        {kind: (number of images, repeat factor)}.
    """
    kinds = []
    for image_id in dataset.image_ids:
        info = dataset.image_info[image_id]
        if "kind" not in info:
            info["kind"] = image_kind(dataset.load_image(image_id))
        kinds.append(info["kind"])
    counts = {k: kinds.count(k) for k in sorted(set(kinds))}
    factors = {k: max(1.0, float(np.sqrt(threshold * len(kinds) / n))) for k, n in counts.items()}
    for image_id, kind in zip(dataset.image_ids, kinds):
        dataset.image_info[image_id]["repeat_factor"] = factors[kind]
    return {k: (counts[k], factors[k]) for k in counts}


class NucleusDataset(Dataset):
    """DSB2018 nuclei: one class, instance masks one PNG per nucleus."""

    def load_nucleus(self, dataset_dir, subset, unlabelled="allow"):
        """Register the images of ``subset``.

        Args:
            dataset_dir: folder holding ``stage1_train`` (and any other subset folders).
            subset: "train" / "val" (a deterministic split of stage1_train stratified by image
                kind), or any folder name under dataset_dir such as "stage1_train".
            unlabelled: what to do with an image whose ``masks/`` folder is missing or holds
                no PNG: "allow" (detection: it has no truth), "error" (training and
                evaluation: it would be learnt or scored as an image without nuclei), or
                "skip" (leave it out, logged; the names are in ``self.skipped``).

        Raises:
            ValueError: missing folder, no image in it, or (``unlabelled="error"``) images
                without masks, named.
        """
        if unlabelled not in UNLABELLED:
            raise ValueError(f"unlabelled={unlabelled!r}; use one of {UNLABELLED}")
        self.add_class("nucleus", 1, "nucleus")
        if subset in ("train", "val"):
            folder = os.path.join(dataset_dir, "stage1_train")
        else:
            folder = os.path.join(dataset_dir, subset)
        if not os.path.isdir(folder):
            raise ValueError(f"dataset folder not found: {folder}")
        ids = sorted(d for d in os.listdir(folder)
                     if os.path.isdir(os.path.join(folder, d, "images")))
        if not ids:
            raise ValueError(f"no images in {folder}: expected <id>/images/<id>.png folders")
        if subset in ("train", "val"):
            train_ids, val_ids = split_ids(folder, ids)
            ids = train_ids if subset == "train" else val_ids
        self.skipped = []
        if unlabelled != "allow":
            missing = [i for i in ids if not _has_masks(os.path.join(folder, i, "masks"))]
            if missing and unlabelled == "error":
                shown = ", ".join(os.path.join(folder, i) for i in missing[:3])
                more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
                raise ValueError(
                    f"{len(missing)} image(s) of {folder} have no masks (a missing or empty "
                    f"masks/ folder): {shown}{more}. Training or scoring them would treat "
                    "their nuclei as background. Add their masks, move them out of the "
                    "subset, or pass --skip-unlabelled to leave them out.")
            for image_id in missing:
                log.warning("skipping image %s: no masks (missing or empty masks/ folder)",
                            os.path.join(folder, image_id))
            self.skipped = missing
            ids = [i for i in ids if i not in set(missing)]
            if not ids:
                raise ValueError(f"no image of {folder} has masks; nothing to train or score.")
        for image_id in ids:
            self.add_image("nucleus", image_id=image_id,
                           path=os.path.join(folder, image_id, "images", image_id + ".png"))
        return self

    def __init__(self, class_map=None, cache_masks=True):
        super().__init__(class_map)
        # DSB images have up to ~400 mask PNGs; reading them every epoch dominates a CPU
        # step. The masks are cached as one int32 label image per image, and the few pixels
        # two nuclei share (5 of the 506 training images have 1-2) as (row, col, label) rows:
        # image id -> pack_masks' (labels, shared).
        self.cache_masks = cache_masks
        self._label_cache = {}

    def load_mask(self, image_id):
        """Masks [H, W, N] bool, class ids [N]; a folder without masks gives N = 0.

        Raises:
            ValueError: a mask file that cannot be read, or an empty masks folder.
        """
        if image_id in self._label_cache:
            labels, shared = self._label_cache[image_id]
            n = int(max(labels.max(), shared[:, 2].max(initial=0)))
            masks = labels[..., None] == np.arange(1, n + 1, dtype=labels.dtype)
            masks[shared[:, 0], shared[:, 1], shared[:, 2] - 1] = True
            return masks, np.ones([n], dtype=np.int32)
        masks, class_ids = self._read_masks(image_id)
        if self.cache_masks and masks.shape[-1]:
            self._label_cache[image_id] = pack_masks(masks)
        return masks, class_ids

    def load_mask_window(self, image_id, y, x, height, width):
        """Training crops from the cached label image: cut the window first, then expand only
        the nuclei inside it ([h, w, n] instead of [H, W, N] for a 1000-nucleus histology
        image). None (the loader then uses :meth:`load_mask`, which fills the cache) until
        the image has been loaded once."""
        if image_id not in self._label_cache:
            return None
        labels, shared = self._label_cache[image_id]
        window = labels[y:y + height, x:x + width]
        present = np.unique(window)
        present = present[present > 0]
        shared = shared[(shared[:, 0] >= y) & (shared[:, 0] < y + height)
                        & (shared[:, 1] >= x) & (shared[:, 1] < x + width)]
        present = np.union1d(present, shared[:, 2]).astype(labels.dtype)
        masks = window[..., None] == present
        masks[shared[:, 0] - y, shared[:, 1] - x, np.searchsorted(present, shared[:, 2])] = True
        return masks, np.ones([len(present)], dtype=np.int32)

    def object_size(self, image_id):
        """Median nucleus diameter in pixels (Dataset.object_size), from the cached label
        image's pixel counts when there is one (no [H, W, N] expansion)."""
        if image_id not in self._object_sizes:
            if image_id not in self._label_cache:
                return super().object_size(image_id)
            labels, shared = self._label_cache[image_id]
            n = int(max(labels.max(), shared[:, 2].max(initial=0))) + 1
            areas = (np.bincount(labels.ravel(), minlength=n)
                     + np.bincount(shared[:, 2], minlength=n))
            self._object_sizes[image_id] = median_diameter(areas[1:])
        return self._object_sizes[image_id]

    def _read_masks(self, image_id):
        info = self.image_info[image_id]
        mask_dir = os.path.join(os.path.dirname(os.path.dirname(info["path"])), "masks")
        if not os.path.isdir(mask_dir):
            return np.zeros((0, 0, 0), bool), np.zeros([0], np.int32)
        files = sorted(f for f in os.listdir(mask_dir) if f.endswith(".png"))
        if not files:
            raise ValueError(f"masks folder is empty: {mask_dir}")
        size = read_image_file(info["path"]).shape[:2]
        masks = []
        for name in files:
            mask = read_image_file(os.path.join(mask_dir, name))
            mask = mask[..., 0] if mask.ndim == 3 else mask
            if mask.shape != size:
                raise ValueError(f"mask {os.path.join(mask_dir, name)} is {mask.shape[0]}x"
                                 f"{mask.shape[1]} pixels but its image {info['path']} is "
                                 f"{size[0]}x{size[1]}")
            masks.append(mask > 0)
        masks = np.stack(masks, axis=-1)
        return masks, np.ones([masks.shape[-1]], dtype=np.int32)

    def image_reference(self, image_id):
        return self.image_info[image_id]["path"]


def pack_masks(masks):
    """Instance masks as a label image plus the pixels they share, losslessly.

    Args:
        masks: [H, W, N] bool.

    Returns:
        labels [H, W] int32: 1 + the first instance covering each pixel, 0 for background;
        shared [K, 3] int64: (row, col, 1 + instance) of every further instance covering a
        pixel (empty when no masks overlap).
    """
    covering = masks.sum(axis=-1)
    labels = np.where(covering > 0, masks.argmax(axis=-1) + 1, 0).astype(np.int32)
    rows, cols = np.nonzero(covering > 1)
    pixel, instance = np.nonzero(masks[rows, cols])
    further = instance + 1 != labels[rows[pixel], cols[pixel]]
    return labels, np.stack([rows[pixel][further], cols[pixel][further],
                             instance[further] + 1], axis=1).astype(np.int64)


def _has_masks(mask_dir):
    """True when ``mask_dir`` exists and holds at least one PNG."""
    return os.path.isdir(mask_dir) and any(f.endswith(".png") for f in os.listdir(mask_dir))
