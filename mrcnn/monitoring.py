"""TensorBoard monitoring beyond the losses: every N epochs, detect on a few validation images
and log the DSB2018 score, COCO mask AP50 and overlay images of the predicted masks.

Tags (in ``<run folder>/detections``): ``detections/dsb_score``, ``detections/ap50``,
``detections/iou``, ``detections/dice`` (scalars) and ``detections/overlays`` (images).
"""

import logging
import os

import keras
import numpy as np
import tensorflow as tf

from mrcnn.config import inference_config
from mrcnn.evaluation import evaluate_dataset
from mrcnn.inference import Detector
from mrcnn.modeling.factory import build_maskrcnn
from mrcnn.visualize import overlay_instances
from mrcnn.weights import flat_layers

log = logging.getLogger(__name__)


def copy_weights_by_name(source, target):
    """Copy weights between two Keras models layer by layer where names and shapes agree."""
    by_name = {layer.name: layer for layer in flat_layers(source) if layer.weights}
    copied = 0
    for layer in flat_layers(target):
        src = by_name.get(layer.name)
        if src is None or not layer.weights:
            continue
        values = src.get_weights()
        if [v.shape for v in values] == [tuple(w.shape) for w in layer.weights]:
            layer.set_weights(values)
            copied += 1
    return copied


class DetectionMetricsCallback(keras.callbacks.Callback):
    """Every ``every`` epochs: copy the training weights into an inference model, detect on the
    first ``num_images`` images of ``dataset`` and log metrics and overlays to TensorBoard.

    Args:
        dataset: prepared validation Dataset. config: the training config.
        log_dir: the run folder (TensorBoard logdir). every: epochs between evaluations.
    """

    def __init__(self, dataset, config, log_dir, every=5, num_images=4, max_overlays=3):
        super().__init__()
        self.dataset, self.every, self.num_images = dataset, max(1, int(every)), num_images
        self.max_overlays = max_overlays
        self.config = inference_config(config)
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "detections"))
        self.infer = None
        self.last = None

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        if self.infer is None:
            self.infer = Detector(self.config, build_maskrcnn(self.config, "inference"))
        copy_weights_by_name(self.model, self.infer.keras_model)
        ids = list(self.dataset.image_ids)[:self.num_images]
        overlays = []

        def predict(image):
            r = self.infer.detect([image])[0]
            if len(overlays) < self.max_overlays:
                overlays.append(overlay_instances(image, r["masks"]))
            return {"masks": r["masks"], "scores": r["scores"]}
        metrics = evaluate_dataset(self.dataset, predict, ids, warmup=0, log_every=0)
        with self.writer.as_default(step=epoch + 1):
            for key in ("dsb_score", "ap50", "iou", "dice"):
                tf.summary.scalar(f"detections/{key}", metrics[key])
            for k, image in enumerate(overlays):
                tf.summary.image(f"detections/overlays/{k}", image[None].astype(np.uint8))
        self.writer.flush()
        self.last = metrics
        if logs is not None:
            logs["val_dsb_score"] = metrics["dsb_score"]
            logs["val_ap50"] = metrics["ap50"]
        log.info("epoch %d: DSB score %.4f, AP50 %.4f on %d validation images", epoch + 1,
                 metrics["dsb_score"], metrics["ap50"], len(ids))
