"""The Matterport-style facade: ``MaskRCNN(mode, config, model_dir)``.

    model = MaskRCNN(mode="training", config=config, model_dir="logs")
    model.train(train_ds, val_ds, learning_rate=1e-3, epochs=20, layers="heads")
    model.train(train_ds, val_ds, learning_rate=1e-4, epochs=40, layers="all")  # continues
    infer = MaskRCNN(mode="inference", config=inference_config, model_dir="logs")
    infer.load_weights(infer.find_last(), by_name=True)
    r = infer.detect([image])[0]   # rois, class_ids, scores, masks

Training lives in :mod:`mrcnn.training` (run folders, checkpoints, fit), inference in
:mod:`mrcnn.inference` (mold, predict in batches, unmold); this class wires them together.
"""

import logging
import os

import keras
import tensorflow as tf

import backbones
from mrcnn import training as training_lib
from mrcnn.data.dataset import Dataset  # noqa: F401  (Matterport: modellib.Dataset users)
from mrcnn.data.loader import load_image_gt  # noqa: F401  (Matterport re-export)
from mrcnn import export as export_lib
from mrcnn.inference import Detector
from mrcnn.modeling.factory import backbone_norm, build_maskrcnn, small_batch_norm_warning
from mrcnn.training import find_last_checkpoint  # noqa: F401  (modellib.find_last_checkpoint)
from mrcnn.weights import load_weights_by_name, save_weights_by_name

log = logging.getLogger(__name__)



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
        strategy = (training_lib.distribution_strategy(config) if mode == "training"
                    else tf.distribute.get_strategy())
        with strategy.scope():
            keras_model = build_maskrcnn(config, mode, backbone_weights)
        self._setup(mode, config, model_dir, keras_model, strategy)

    def _setup(self, mode, config, model_dir, keras_model, strategy):
        self.mode, self.config, self.model_dir = mode, config, model_dir
        self.spec = backbones.get_backbone_spec(config.BACKBONE)
        self.strategy = strategy
        self.keras_model = keras_model
        self.detector = Detector(config, keras_model) if mode == "inference" else None
        norm_warning = small_batch_norm_warning(config) if mode == "training" else None
        if norm_warning:      # once per training model, not once per train() stage
            log.warning(norm_warning)
        self._optimizer_state = None
        self.set_log_dir()

    def export(self, path, format="saved_model"):
        """Write a SavedModel whose ``serve(image uint8 [H, W, C])`` returns boxes, class ids,
        scores and full-size masks, runnable without this package (see :mod:`mrcnn.export`;
        ONNX and LiteRT are refused with the op that stops them)."""
        return export_lib.export(self, path, format)

    @classmethod
    def from_keras_file(cls, filepath, config, model_dir="logs"):
        """An inference MaskRCNN around a ``.keras`` file, loaded with safe mode on."""
        config.validate()
        obj = cls.__new__(cls)
        obj._setup("inference", config, model_dir,
                   keras.models.load_model(filepath, safe_mode=True), tf.distribute.get_strategy())
        return obj

    # Run folders, checkpoints, weight files ------------------------------------------------
    def set_log_dir(self, model_path=None):
        """Start a new run folder, or continue the run and epoch of ``model_path``."""
        self.log_dir, self.checkpoint_path, self.epoch = training_lib.run_folder(
            self.model_dir, self.config.NAME, model_path)

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
        log.info("Starting at epoch %d, LR=%s, layers=%s, checkpoints in %s",
                 self.epoch, learning_rate, layers, self.log_dir)
        history = training_lib.fit(
            self.keras_model, self.config, strategy=self.strategy,
            regex=training_lib.layers_regex(self.spec, layers),
            train_bn=backbone_norm(self.config) == "batch", train_dataset=train_dataset,
            val_dataset=val_dataset, learning_rate=learning_rate, epochs=epochs,
            initial_epoch=self.epoch, log_dir=self.log_dir,
            checkpoint_path=self.checkpoint_path, optimizer_state=self._optimizer_state,
            augmentation=augmentation, custom_callbacks=custom_callbacks,
            time_budget_seconds=time_budget_seconds, seed=seed, verbose=verbose)
        self._optimizer_state = None
        self.epoch = history.epoch[-1] + 1 if history.epoch else self.epoch
        return history

    def average_checkpoints(self, count, after_epoch=0):
        """Average this run's newest ``count`` epoch checkpoints later than ``after_epoch``
        (say the epochs of the last, lower learning-rate ``train`` call) into
        ``mask_rcnn_<name>_NNNN_average.weights.h5`` (see
        :func:`mrcnn.training.average_last_checkpoints`); load it with :meth:`load_weights`.

        Returns:
            the file written, or None when fewer than 2 checkpoints qualify.
        """
        path, _ = training_lib.average_last_checkpoints(self.log_dir, self.config.NAME, count,
                                                        after_epoch=after_epoch)
        return path

    # Inference (see mrcnn.inference.Detector) ----------------------------------------------
    def _detector(self):
        assert self.mode == "inference", "Create the model in inference mode to detect."
        return self.detector

    def mold_inputs(self, images, scales=None):
        """See :meth:`mrcnn.inference.Detector.mold_inputs`."""
        return self._detector().mold_inputs(images, scales)

    def get_anchors(self, image_shape):
        """Normalised anchors [A, 4] for a molded image shape."""
        return Detector(self.config, self.keras_model).get_anchors(image_shape)

    def run_graph(self, image, scale=None):
        """Every raw output of the inference graph for one image (see
        :meth:`mrcnn.inference.Detector.run_graph`)."""
        return self._detector().run_graph(image, scale)

    def unmold_detections(self, detections, mrcnn_mask, original_image_shape, image_shape,
                          window, mask_threshold=None, image=None, intensity=None):
        """See :meth:`mrcnn.inference.Detector.unmold_detections`."""
        return self._detector().unmold_detections(detections, mrcnn_mask, original_image_shape,
                                                  image_shape, window, mask_threshold, image,
                                                  intensity)

    def detect(self, images, verbose=0):
        """Detect instances in any number of images of any sizes.

        Returns:
            one dict per image: rois [N, 4] (y1, x1, y2, x2) pixels of the original image,
            class_ids [N] int32, scores [N] float32, masks [H, W, N] bool.
        """
        return self._detector().detect(images, verbose=verbose)
