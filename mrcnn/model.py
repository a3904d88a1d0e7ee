"""The Matterport-style facade: ``MaskRCNN(mode, config, model_dir)``.

    model = MaskRCNN(mode="training", config=config, model_dir="logs")
    model.train(train_ds, val_ds, learning_rate=1e-3, epochs=20, layers="heads")
    model.train(train_ds, val_ds, learning_rate=1e-4, epochs=40, layers="all")  # continues
    infer = MaskRCNN(mode="inference", config=inference_config, model_dir="logs")
    infer.load_weights(infer.find_last(), by_name=True)
    r = infer.detect([image])[0]   # rois, class_ids, scores, masks
"""

import datetime
import glob
import logging
import os
import re
import time

import keras
import numpy as np
import tensorflow as tf

import backbones
from mrcnn import training as training_lib
from mrcnn.data.dataset import Dataset  # noqa: F401  (Matterport: modellib.Dataset users)
from mrcnn.data.generator import DataGenerator, pyramid_anchors
from mrcnn.data.loader import load_image_gt  # noqa: F401  (Matterport re-export)
from mrcnn.modeling.factory import backbone_norm, build_maskrcnn
from mrcnn.ops.boxes import denorm_boxes, norm_boxes
from mrcnn.ops.image import compose_image_meta, mold_image, resize_image
from mrcnn.ops.masks import expand_mask
from mrcnn.weights import load_weights_by_name, save_weights_by_name

log = logging.getLogger(__name__)

_CHECKPOINT_RE = re.compile(r".*[/\\][\w-]+(\d{8}T\d{4})[/\\]mask_rcnn_[\w-]+_(\d{4})\.weights\.h5$")


def _strategy(config):
    """MirroredStrategy over GPU_COUNT devices (GPUs, else logical CPUs), or the default."""
    if config.GPU_COUNT <= 1:
        return tf.distribute.get_strategy()
    gpus = tf.config.list_logical_devices("GPU")
    devices = gpus if len(gpus) >= config.GPU_COUNT else tf.config.list_logical_devices("CPU")
    if len(devices) < config.GPU_COUNT:
        raise ValueError(f"GPU_COUNT={config.GPU_COUNT} but only {len(devices)} devices exist.")
    return tf.distribute.MirroredStrategy([d.name for d in devices[:config.GPU_COUNT]])


def find_last_checkpoint(model_dir, name):
    """Newest ``mask_rcnn_<name>_NNNN.weights.h5`` of the newest ``<name><timestamp>`` run.

    Raises:
        FileNotFoundError: no run folder or no checkpoint in it.
    """
    name = name.lower()
    runs = sorted(d for d in glob.glob(os.path.join(model_dir, f"{name}*")) if os.path.isdir(d))
    for run in reversed(runs):
        checkpoints = sorted(glob.glob(os.path.join(run, f"mask_rcnn_{name}_*.weights.h5")))
        if checkpoints:
            return checkpoints[-1]
    raise FileNotFoundError(f"no checkpoint of {name!r} under {model_dir}: train first "
                            "or pass a weights path.")


class MaskRCNN:
    """Mask R-CNN with Matterport's API over a Keras 3 model.

    Args:
        mode: "training" or "inference".
        config: a Config subclass instance (validated here).
        model_dir: where training runs (checkpoints, TensorBoard logs) go.
        backbone_weights: None, "imagenet" or a local HDF5 path for the backbone.
    """

    def __init__(self, mode, config, model_dir, backbone_weights=None):
        if mode not in ("training", "inference"):
            raise ValueError(f"mode must be 'training' or 'inference', got {mode!r}")
        config.validate()
        self.mode = mode
        self.config = config
        self.model_dir = model_dir
        self.spec = backbones.get_backbone_spec(config.BACKBONE)
        self.strategy = _strategy(config) if mode == "training" else tf.distribute.get_strategy()
        with self.strategy.scope():
            self.keras_model = build_maskrcnn(config, mode, backbone_weights)
        self.epoch = 0
        self.log_dir = None
        self.checkpoint_path = None
        self._predict = None
        self._optimizer_state = None
        self.set_log_dir()

    # Run folders and checkpoints -------------------------------------------------------
    def set_log_dir(self, model_path=None):
        """Start a new run folder, or continue the run and epoch of ``model_path``."""
        now = datetime.datetime.now()
        self.epoch = 0
        match = _CHECKPOINT_RE.match(os.path.abspath(model_path)) if model_path else None
        if match:
            now = datetime.datetime.strptime(match.group(1), "%Y%m%dT%H%M")
            self.epoch = int(match.group(2))
        name = self.config.NAME.lower()
        self.log_dir = os.path.join(self.model_dir, f"{name}{now:%Y%m%dT%H%M}")
        self.checkpoint_path = training_lib.checkpoint_pattern(self.log_dir, name)

    def find_last(self):
        """Path of the newest checkpoint of the newest run of this config's NAME.

        Raises:
            FileNotFoundError: no run folder or no checkpoint in it.
        """
        return find_last_checkpoint(self.model_dir, self.config.NAME)

    def load_weights(self, filepath, by_name=True, exclude=None, skip_mismatch=False):
        """Load weights by layer name (ours and Matterport's HDF5 files), or a Keras 3 native
        ``.weights.h5`` file of the same architecture with ``by_name=False``.

        ``skip_mismatch=True`` loads only the layers whose shapes agree (the convolutions of a
        file saved with another BACKBONE_NORM, say) and logs the others. A checkpoint path
        from a run folder also continues that run's epoch count.
        """
        if by_name:
            report = load_weights_by_name(self.keras_model, filepath, exclude=exclude,
                                          skip_mismatch=skip_mismatch)
            for key in ("missing", "skipped"):
                if report[key]:
                    log.info("%d layers %s %s: %s", len(report[key]),
                             "not in" if key == "missing" else "of other shapes in", filepath,
                             ", ".join(report[key][:10]))
        else:
            self.keras_model.load_weights(filepath)
        self.set_log_dir(filepath)
        state = training_lib.optimizer_state_path(os.fspath(filepath))
        self._optimizer_state = state if os.path.exists(state) else None
        return self

    def save_weights(self, filepath):
        """Write all weights by layer name (atomic)."""
        return save_weights_by_name(self.keras_model, filepath)

    def save(self, filepath):
        """Save the whole Keras model as ``.keras`` (loads with ``safe_mode=True``)."""
        if not str(filepath).endswith(".keras"):
            raise ValueError(f"{filepath}: whole-model files must end in .keras")
        self.keras_model.save(filepath)
        return filepath

    @classmethod
    def from_keras_file(cls, filepath, config, model_dir="logs"):
        """An inference MaskRCNN around a ``.keras`` file, loaded with safe mode on."""
        obj = cls.__new__(cls)
        config.validate()
        obj.mode, obj.config, obj.model_dir = "inference", config, model_dir
        obj.spec = backbones.get_backbone_spec(config.BACKBONE)
        obj.strategy = tf.distribute.get_strategy()
        obj.keras_model = keras.models.load_model(filepath, safe_mode=True)
        obj.epoch, obj._predict, obj._optimizer_state = 0, None, None
        obj.set_log_dir()
        return obj

    # Training ----------------------------------------------------------------------------
    def train(self, train_dataset, val_dataset, learning_rate, epochs, layers,
              augmentation=None, custom_callbacks=None, no_augmentation_sources=None,
              time_budget_seconds=None, seed=None, verbose=1):
        """Train until epoch ``epochs`` (counted across calls) the layers selected by
        ``layers``: "heads", "3+", "4+", "5+", "all", or a regex over layer names.

        Returns:
            the keras History of this call.
        """
        assert self.mode == "training", "Create the model in training mode to train it."
        config = self.config
        regex = training_lib.layers_regex(self.spec, layers)
        train_gen = DataGenerator(train_dataset, config, shuffle=True, augmentation=augmentation,
                                  steps=config.STEPS_PER_EPOCH, seed=seed,
                                  workers=max(1, config.WORKERS),
                                  use_multiprocessing=config.WORKERS > 0)
        val_gen = None
        if val_dataset is not None:
            val_gen = DataGenerator(val_dataset, config, shuffle=True,
                                    steps=config.VALIDATION_STEPS, seed=seed)
        os.makedirs(self.log_dir, exist_ok=True)
        callbacks = [training_lib.LearningRateLogger()]
        if val_dataset is not None and config.EVAL_EVERY_N_EPOCHS > 0:
            from mrcnn.monitoring import DetectionMetricsCallback
            callbacks.append(DetectionMetricsCallback(
                val_dataset, config, self.log_dir, every=config.EVAL_EVERY_N_EPOCHS,
                num_images=config.EVAL_IMAGES))
        callbacks += [keras.callbacks.TensorBoard(log_dir=self.log_dir, write_graph=False),
                      training_lib.CheckpointCallback(self.checkpoint_path),
                      training_lib.EpochSummary()]
        if time_budget_seconds:
            callbacks.append(training_lib.TimeBudget(time.time() + time_budget_seconds))
        callbacks += list(custom_callbacks or [])

        log.info("Starting at epoch %d, LR=%s, layers=%s, checkpoints in %s",
                 self.epoch, learning_rate, layers, self.log_dir)
        with self.strategy.scope():
            trainable = training_lib.set_trainable(
                self.keras_model, regex, backbone_norm(config) == "batch", config.TRAIN_HEAD_BN)
            if not trainable:
                raise ValueError(f"layers={layers!r} selects no layer with weights.")
            start_step = self.epoch * config.STEPS_PER_EPOCH
            self.keras_model.compile(
                optimizer=training_lib.make_optimizer(config, learning_rate, start_step),
                jit_compile=False)
            if self._optimizer_state:  # resuming a checkpoint: continue its momentum
                training_lib.restore_optimizer_state(self.keras_model, self._optimizer_state)
                self._optimizer_state = None
        history = self.keras_model.fit(
            train_gen, initial_epoch=self.epoch, epochs=epochs,
            steps_per_epoch=config.STEPS_PER_EPOCH, validation_data=val_gen,
            validation_steps=config.VALIDATION_STEPS if val_gen else None,
            callbacks=callbacks, verbose=verbose)
        self.epoch = history.epoch[-1] + 1 if history.epoch else self.epoch
        return history

    # Inference ---------------------------------------------------------------------------
    def mold_inputs(self, images):
        """Resize and mean-subtract images for the network.

        Returns:
            molded_images [N, H, W, C] float32, image_metas [N, META], windows [N, 4] pixels.
            (All images must mold to one shape; :meth:`detect` groups them for you.)
        """
        config = self.config
        mode = "pad64" if config.IMAGE_RESIZE_MODE == "crop" else config.IMAGE_RESIZE_MODE
        molded, metas, windows = [], [], []
        for image in images:
            image = np.asarray(image)
            if image.ndim == 2:
                image = image[..., None]
            if image.shape[-1] != config.IMAGE_CHANNEL_COUNT:
                if image.shape[-1] == 1 and config.IMAGE_CHANNEL_COUNT == 3:
                    image = np.repeat(image, 3, axis=-1)
                elif image.shape[-1] == 4 and config.IMAGE_CHANNEL_COUNT == 3:
                    image = image[..., :3]
                else:
                    raise ValueError(f"image has {image.shape[-1]} channels; the config "
                                     f"expects {config.IMAGE_CHANNEL_COUNT}.")
            out, window, scale, _, _ = resize_image(
                image, min_dim=config.IMAGE_MIN_DIM, min_scale=config.IMAGE_MIN_SCALE,
                max_dim=config.IMAGE_MAX_DIM, mode=mode)
            molded.append(mold_image(out, config.MEAN_PIXEL))
            metas.append(compose_image_meta(0, image.shape, out.shape, window, scale,
                                            np.zeros([config.NUM_CLASSES], dtype=np.int32)))
            windows.append(window)
        return np.stack(molded), np.stack(metas), np.array(windows)

    def get_anchors(self, image_shape):
        """Normalised anchors [A, 4] for a molded image shape."""
        return norm_boxes(pyramid_anchors(self.config, image_shape), image_shape[:2])

    def _run(self, molded, metas):
        if self._predict is None:
            model = self.keras_model

            @tf.function(jit_compile=False, reduce_retracing=False)
            def predict(image, meta, anchors):
                return model({"input_image": image, "input_image_meta": meta,
                              "input_anchors": anchors}, training=False)
            self._predict = predict
        anchors = self.get_anchors(molded.shape[1:])
        anchors = np.broadcast_to(anchors, (len(molded),) + anchors.shape)
        out = self._predict(tf.constant(molded), tf.constant(metas), tf.constant(anchors))
        return {k: v.numpy() for k, v in out.items()}

    def run_graph(self, image):
        """Every raw output of the inference graph for one image, for inspection.

        Returns:
            dict: the molded ``image``, ``window`` (pixels of the molded image), ``anchors``
            [A, 4] normalised, and the network outputs for this image: ``rpn_class`` [A, 2],
            ``rpn_bbox`` [A, 4], ``rpn_rois`` [N, 4] normalised, ``mrcnn_class`` [N, C],
            ``mrcnn_bbox`` [N, C, 4], ``detections`` [D, 6] (normalised y1, x1, y2, x2,
            class, score), ``mrcnn_mask`` [D, 28, 28, C].
        """
        assert self.mode == "inference", "Create the model in inference mode."
        molded, metas, windows = self.mold_inputs([image])
        size = self.config.BATCH_SIZE
        out = self._run(np.repeat(molded, size, axis=0), np.repeat(metas, size, axis=0))
        result = {k: v[0] for k, v in out.items()}
        result.update(image=molded[0], window=windows[0],
                      anchors=self.get_anchors(molded.shape[1:]))
        return result

    def unmold_detections(self, detections, mrcnn_mask, original_image_shape, image_shape,
                          window):
        """One image's network output -> rois (pixels of the original image), class_ids,
        scores, masks [H, W, N] bool."""
        n = int(np.sum(detections[:, 4] > 0))
        boxes = detections[:n, :4]
        class_ids = detections[:n, 4].astype(np.int32)
        scores = detections[:n, 5]
        masks = mrcnn_mask[np.arange(n), :, :, class_ids] if n else np.zeros((0, 1, 1))
        wy1, wx1, wy2, wx2 = norm_boxes(np.array([window]), image_shape[:2])[0]
        boxes = (boxes - np.array([wy1, wx1, wy1, wx1])) / \
            np.array([wy2 - wy1, wx2 - wx1, wy2 - wy1, wx2 - wx1])
        boxes = denorm_boxes(boxes, original_image_shape[:2])
        keep = np.flatnonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
        boxes, class_ids, scores, masks = boxes[keep], class_ids[keep], scores[keep], masks[keep]
        threshold = getattr(self.config, "DETECTION_MASK_THRESHOLD", 0.5)
        return boxes, class_ids, scores, expand_mask(boxes, np.moveaxis(masks, 0, -1),
                                                     original_image_shape, threshold)

    def detect(self, images, verbose=0):
        """Detect instances in any number of images of any sizes.

        Images are grouped by molded shape and run in batches of config.BATCH_SIZE (the last
        batch is padded), so the graph is traced once per molded shape.

        Returns:
            one dict per image: rois [N, 4] (y1, x1, y2, x2) pixels of the original image,
            class_ids [N] int32, scores [N] float32, masks [H, W, N] bool.
        """
        assert self.mode == "inference", "Create the model in inference mode to detect."
        results = [None] * len(images)
        molded = [self.mold_inputs([image]) for image in images]
        groups = {}
        for i, (m, _, _) in enumerate(molded):
            groups.setdefault(m.shape[1:], []).append(i)
        size = self.config.BATCH_SIZE
        for indices in groups.values():
            for start in range(0, len(indices), size):
                chunk = indices[start:start + size]
                padded = chunk + [chunk[-1]] * (size - len(chunk))
                out = self._run(np.concatenate([molded[i][0] for i in padded]),
                                np.concatenate([molded[i][1] for i in padded]))
                for j, i in enumerate(chunk):
                    rois, class_ids, scores, masks = self.unmold_detections(
                        out["detections"][j], out["mrcnn_mask"][j], np.asarray(images[i]).shape,
                        molded[i][0].shape[1:], molded[i][2][0])
                    results[i] = {"rois": rois, "class_ids": class_ids, "scores": scores,
                                  "masks": masks}
                    if verbose:
                        log.info("image %d: %d detections", i, len(class_ids))
        return results
