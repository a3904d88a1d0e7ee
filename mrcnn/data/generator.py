"""Training batches as a keras.utils.PyDataset (worker processes optional)."""

import logging

import keras
import numpy as np

from mrcnn.config import anchor_settings
from mrcnn.data.dataset import BadImageSkipper
from mrcnn.data.loader import load_image_gt, load_normalized_image
from mrcnn.data.targets import build_rpn_targets
from mrcnn.ops.anchors import AnchorGrid
from mrcnn.ops.image import META_IMAGE_HW, mold_image

log = logging.getLogger(__name__)


class DataGenerator(keras.utils.PyDataset):
    """Batches of Matterport's training inputs.

    Each item is ``(inputs,)`` with inputs a dict: input_image [B, H, W, C] float32
    (mean-subtracted), input_image_meta [B, META], input_rpn_match [B, A, 1] int32,
    input_rpn_bbox [B, R, 4], input_gt_class_ids [B, G] int32, input_gt_boxes [B, G, 4]
    pixels, input_gt_masks [B, h, w, G] uint8 0/1 (G = MAX_GT_INSTANCES, zero-padded).

    Images without instances are kept (they train the RPN and classifier as negatives).
    ``dataset.image_info[i]["repeat_factor"]`` (optional, default 1) oversamples image i.
    An image that fails to load is logged once and replaced by the next one; if every image
    fails the error is raised.

    Args:
        dataset: prepared Dataset. config: Config.
        shuffle: reshuffle image order every epoch.
        augmentation: see :mod:`mrcnn.data.augment`.
        steps: batches per epoch (default: one pass over the images).
        seed: seeds the order, crops and RPN sampling.
        workers / use_multiprocessing / max_queue_size: passed to PyDataset.
        shard: (index, count) — read only images index, index + count, ... (each worker of a
            multi-worker training its own share).
    """

    def __init__(self, dataset, config, shuffle=True, augmentation=None, steps=None, seed=None,
                 workers=1, use_multiprocessing=False, max_queue_size=10, shard=None):
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing,
                         max_queue_size=max_queue_size)
        self.shard = shard
        if len(dataset.image_ids) == 0:
            raise ValueError("the dataset has no images; check the dataset folder and subset.")
        if dataset.num_classes != config.NUM_CLASSES:
            raise ValueError(f"the dataset has {dataset.num_classes} classes (with background) "
                             f"but config.NUM_CLASSES is {config.NUM_CLASSES}.")
        self.dataset = dataset
        self.config = config
        self.shuffle = shuffle
        self.augmentation = augmentation
        self.batch_size = config.BATCH_SIZE
        self.steps = steps or int(np.ceil(len(dataset.image_ids) / self.batch_size))
        self.seed = seed
        self.epoch = 0
        self.skipper = BadImageSkipper(dataset)
        self._order = self._make_order()
        self._anchor_grids = {}
        self._image_cache = {}
        self._image_cache_free = int(config.IMAGE_CACHE_MB * 2 ** 20)

    def _make_order(self):
        """This epoch's image order. An image whose ``image_info`` has ``repeat_factor`` r
        appears floor(r) times plus once more with probability r - floor(r) (repeat-factor
        sampling, as LVIS does for rare classes), so rare image kinds are seen more often."""
        ids = np.array(self.dataset.image_ids)
        rng = np.random.RandomState(None if self.seed is None else self.seed + self.epoch)
        factors = self.dataset.repeat_factors()
        if self.shard is not None:
            index, count = self.shard
            ids, factors = ids[index::count], factors[index::count]
            if not len(ids):
                raise ValueError(f"worker {index} of {count} has no image: the dataset has "
                                 f"{len(self.dataset.image_ids)}")
        if np.any(factors != 1.0):
            counts = np.floor(factors).astype(int)
            counts += rng.rand(len(factors)) < factors - counts
            ids = np.repeat(ids, counts)
            if not len(ids):
                raise ValueError("every image has a repeat_factor below 1 and none was drawn")
        if self.shuffle:
            ids = rng.permutation(ids)
        return ids

    def __len__(self):
        return self.steps

    def on_epoch_end(self):
        self.epoch += 1
        self._order = self._make_order()

    def _anchor_grid(self, shape):
        """The :class:`AnchorGrid` of a batch shape (H, W), built once per shape."""
        key = tuple(shape[:2])
        if key not in self._anchor_grids:
            self._anchor_grids[key] = AnchorGrid(shape, **anchor_settings(self.config))
        return self._anchor_grids[key]

    def _image(self, image_id):
        """The dataset's image [H, W, C], normalised (IMAGE_NORMALIZATION), from memory once
        read while the cache (IMAGE_CACHE_MB) has room: decoding and normalising a DSB2018
        image took 5 ms (AMD EPYC family 26), 40 % of a nucleus batch's data work. Cached
        images are read-only (:func:`load_image_gt` copies the window it augments)."""
        image = self._image_cache.get(image_id)
        if image is None:
            image = load_normalized_image(self.dataset, self.config, image_id)
            if image.nbytes <= self._image_cache_free:
                image = image.view()
                image.flags.writeable = False
                self._image_cache[image_id] = image
                self._image_cache_free -= image.nbytes
        return image

    def _load(self, position, rng):
        n = len(self._order)
        candidates = (self._order[(position + attempt) % n] for attempt in range(n))
        return self.skipper.load(candidates, lambda image_id: load_image_gt(
            self.dataset, self.config, image_id, augmentation=self.augmentation, rng=rng,
            image=self._image(image_id)))

    def __getitem__(self, index):
        config = self.config
        seed = None if self.seed is None else (self.seed * 1000003 + self.epoch * 7919 + index)
        rng = np.random.RandomState(seed)
        examples = [self._load(index * self.batch_size + i, rng) for i in range(self.batch_size)]
        height = max(e[0].shape[0] for e in examples)
        width = max(e[0].shape[1] for e in examples)
        anchors = self._anchor_grid((height, width))
        g = config.MAX_GT_INSTANCES
        mask_hw = examples[0][4].shape[:2] if config.USE_MINI_MASK else (height, width)
        batch = {
            "input_image": np.zeros((self.batch_size, height, width, config.IMAGE_CHANNEL_COUNT),
                                    np.float32),
            "input_image_meta": np.stack([e[1] for e in examples]).astype(np.float32),
            "input_rpn_match": np.zeros((self.batch_size, len(anchors), 1), np.int32),
            "input_rpn_bbox": np.zeros((self.batch_size, config.RPN_TRAIN_ANCHORS_PER_IMAGE, 4),
                                       np.float32),
            "input_gt_class_ids": np.zeros((self.batch_size, g), np.int32),
            "input_gt_boxes": np.zeros((self.batch_size, g, 4), np.float32),
            # uint8, not bool: tf.distribute cannot split bool tensors across replicas.
            "input_gt_masks": np.zeros((self.batch_size,) + tuple(mask_hw) + (g,), np.uint8),
        }
        for b, (image, _, class_ids, boxes, masks) in enumerate(examples):
            if len(class_ids) > g:
                keep = rng.choice(len(class_ids), g, replace=False)
                class_ids, boxes, masks = class_ids[keep], boxes[keep], masks[:, :, keep]
            match, deltas = build_rpn_targets(anchors, class_ids, boxes,
                                              config.RPN_TRAIN_ANCHORS_PER_IMAGE,
                                              config.RPN_BBOX_STD_DEV, rng=rng,
                                              positive_iou=config.RPN_POSITIVE_IOU,
                                              negative_iou=config.RPN_NEGATIVE_IOU)
            h, w = image.shape[:2]
            batch["input_image"][b, :h, :w] = mold_image(image, config.MEAN_PIXEL)
            batch["input_image_meta"][b, META_IMAGE_HW] = (height, width)  # padded batch shape
            batch["input_rpn_match"][b, :, 0] = match
            batch["input_rpn_bbox"][b] = deltas
            n = len(class_ids)
            batch["input_gt_class_ids"][b, :n] = class_ids
            batch["input_gt_boxes"][b, :n] = boxes
            batch["input_gt_masks"][b, :masks.shape[0], :masks.shape[1], :n] = masks
        return (batch,)
