"""Train the U-Net baseline on any instance Dataset, and predict instances with it.

Training sees random 256 x 256 crops (images smaller than that are reflect-padded) with the
same augmentation hook as Mask R-CNN; prediction runs the fully convolutional network on the
whole image (reflect-padded to a multiple of 16) so masks come out at the original resolution.
"""

import logging
import os
import time

import keras
import numpy as np

from mrcnn.atomic import atomic_target
from mrcnn.data.augment import apply_augmentation
from mrcnn.data.dataset import BadImageSkipper
from mrcnn.data.loader import load_full_masks
from mrcnn.training import TimeBudget
from mrcnn.unet.model import BceDiceLoss, build_unet, dice_coefficient
from mrcnn.unet.postprocess import boundary_target, instances_from_probabilities

log = logging.getLogger(__name__)

VARIANTS = {
    # The seed report's baseline as it was: one foreground output, threshold + components.
    "seed": {"outputs": 1, "method": "threshold", "loss": "binary_crossentropy"},
    # Default: a boundary channel and watershed to split touching nuclei.
    "boundary": {"outputs": 2, "method": "watershed", "loss": "bce_dice"},
}
MODEL_FILE = "unet.keras"


def _pad_to(image, height, width, mode="reflect"):
    pad_h, pad_w = max(0, height - image.shape[0]), max(0, width - image.shape[1])
    if not pad_h and not pad_w:
        return image
    pads = [(0, pad_h), (0, pad_w)] + [(0, 0)] * (image.ndim - 2)
    if mode == "reflect" and min(image.shape[:2]) < 2:
        mode = "edge"
    return np.pad(image, pads, mode=mode)


class UNetSequence(keras.utils.PyDataset):
    """Batches of (image crops [B, S, S, 3] in 0-1, targets [B, S, S, outputs])."""

    def __init__(self, dataset, batch_size=8, crop=256, outputs=2, augmentation=None,
                 steps=None, seed=0, **kwargs):
        super().__init__(**kwargs)
        if len(dataset.image_ids) == 0:
            raise ValueError("the dataset has no images; check the dataset folder and subset.")
        self.dataset, self.batch_size, self.crop = dataset, batch_size, crop
        self.outputs, self.augmentation, self.seed = outputs, augmentation, seed
        self.steps = steps or max(1, len(dataset.image_ids) // batch_size)
        self.epoch = 0
        factors = dataset.repeat_factors()   # oversampling, as for Mask R-CNN
        self.probabilities = factors / factors.sum()
        self.skipper = BadImageSkipper(dataset)

    def __len__(self):
        return self.steps

    def on_epoch_end(self):
        self.epoch += 1

    def example(self, image_id, rng):
        image = self.dataset.load_image(image_id)
        masks, _ = load_full_masks(self.dataset, image_id, image)
        image = _pad_to(image, self.crop, self.crop)
        masks = _pad_to(masks, self.crop, self.crop, mode="constant")
        y = rng.randint(0, image.shape[0] - self.crop + 1)
        x = rng.randint(0, image.shape[1] - self.crop + 1)
        image = image[y:y + self.crop, x:x + self.crop]
        masks = masks[y:y + self.crop, x:x + self.crop]
        if self.augmentation is not None:
            image, masks = apply_augmentation(self.augmentation, image, masks)
        target = [masks.any(-1).astype(np.float32)]
        if self.outputs > 1:
            target.append(boundary_target(masks))
        return image.astype(np.float32) / 255.0, np.stack(target, axis=-1)

    def __getitem__(self, index):
        rng = np.random.RandomState((self.seed * 100_003 + self.epoch * 1009 + index) % 2**31)
        ids = rng.choice(self.dataset.image_ids, self.batch_size, p=self.probabilities)
        # an unreadable image is logged once and replaced by the next image of a shuffle
        pairs = [self.skipper.load([i] + list(rng.permutation(self.dataset.image_ids)),
                                   lambda image_id: self.example(image_id, rng)) for i in ids]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def save_model_atomic(model, path):
    """``model.save(path)`` through a temporary ``.keras`` file and a rename."""
    with atomic_target(path, ".tmp.keras") as tmp:
        model.save(tmp)
    return path


class SaveBest(keras.callbacks.Callback):
    """Save the model as ``.keras`` whenever val_loss (or loss) improves, atomically."""

    def __init__(self, path):
        super().__init__()
        self.path, self.best = path, np.inf

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        value = logs.get("val_loss", logs.get("loss"))
        if value is not None and value < self.best:
            self.best = value
            save_model_atomic(self.model, self.path)


def train_unet(train_dataset, val_dataset, out_dir, variant="boundary", epochs=100,
               steps_per_epoch=50, batch_size=8, learning_rate=1e-3, patience=5,
               augmentation=None, time_budget_seconds=None, seed=0, verbose=2):
    """Train with Adam, early stopping on val_loss (patience 5, best weights kept).

    Writes ``out_dir/unet.keras`` (best epoch) and TensorBoard logs in ``out_dir``.

    Returns:
        (keras model, history).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown U-Net variant {variant!r}; use one of {sorted(VARIANTS)}")
    spec = VARIANTS[variant]
    keras.utils.set_random_seed(seed)
    os.makedirs(out_dir, exist_ok=True)
    model = build_unet(input_size=None, outputs=spec["outputs"])
    loss = BceDiceLoss() if spec["loss"] == "bce_dice" else spec["loss"]
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss,
                  metrics=[dice_coefficient])
    train_seq = UNetSequence(train_dataset, batch_size, outputs=spec["outputs"],
                             augmentation=augmentation, steps=steps_per_epoch, seed=seed)
    val_seq = None
    if val_dataset is not None:
        val_seq = UNetSequence(val_dataset, batch_size, outputs=spec["outputs"],
                               steps=max(1, len(val_dataset.image_ids) // batch_size),
                               seed=seed + 1)
    callbacks = [keras.callbacks.TensorBoard(out_dir, write_graph=False),
                 keras.callbacks.EarlyStopping(
                     monitor="val_loss" if val_seq else "loss", patience=patience,
                     restore_best_weights=True),
                 SaveBest(os.path.join(out_dir, MODEL_FILE))]
    if time_budget_seconds:
        callbacks.append(TimeBudget(time.time() + time_budget_seconds))
    history = model.fit(train_seq, validation_data=val_seq, epochs=epochs,
                        callbacks=callbacks, verbose=verbose)
    # EarlyStopping restores the best weights only when it fires; save what we return.
    save_model_atomic(model, os.path.join(out_dir, MODEL_FILE))
    history.skipped_images = train_seq.skipper.skipped()
    return model, history


class UNetPredictor:
    """``predict(image) -> {"masks": [H, W, N] bool, "scores": [N]}`` at original size."""

    def __init__(self, model_or_path, method=None):
        if isinstance(model_or_path, (str, os.PathLike)):
            if not os.path.exists(model_or_path):
                raise FileNotFoundError(f"U-Net model not found: {model_or_path}")
            model_or_path = keras.models.load_model(model_or_path, compile=False,
                                                    safe_mode=True)
        self.model = model_or_path
        outputs = self.model.output_shape[-1]
        self.method = method or ("watershed" if outputs > 1 else "threshold")

    def probabilities(self, image):
        """[H, W, outputs] probabilities for one image [H, W, 3] uint8."""
        h, w = image.shape[:2]
        size = [int(np.ceil(max(s, 16) / 16) * 16) for s in (h, w)]
        x = _pad_to(image[..., :3].astype(np.float32) / 255.0, *size)
        prob = self.model.predict_on_batch(x[None])
        return np.asarray(prob)[0, :h, :w]

    def __call__(self, image):
        masks, scores = instances_from_probabilities(self.probabilities(image), self.method)
        return {"masks": masks, "scores": scores}
