"""Staged training helpers: layer selection, optimizer, learning-rate schedule, callbacks."""

import logging
import math
import os
import re
import time

import keras
import numpy as np

from mrcnn.atomic import atomic_target
from mrcnn.weights import save_weights_by_name

log = logging.getLogger(__name__)

# The detector's own layers (Matterport's names): RPN, FPN and the box/class/mask heads.
HEADS_REGEX = r"(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)"


def layers_regex(spec, layers):
    """``train(layers=...)`` -> a regex over layer names.

    Args:
        spec: the backbone's BackboneSpec (its stage regexes).
        layers: "heads", "3+", "4+", "5+", "all", or a regex passed through.

    Raises:
        ValueError: a stage the backbone declares no regex for.
    """
    if layers == "all":
        return ".*"
    if layers == "heads":
        return HEADS_REGEX
    if layers in ("3+", "4+", "5+"):
        return f"({spec.stage_layers_regex(layers)})|{HEADS_REGEX}"
    return layers


def set_trainable(keras_model, regex, train_bn, train_head_bn=False):
    """Make layers whose name fully matches ``regex`` trainable, freeze the rest.

    BatchNormalization layers are trainable only if they match and ``train_bn`` is True
    (``train_head_bn`` for the heads' ``mrcnn_*`` ones); Keras 3 runs a non-trainable
    BatchNormalization in inference mode.

    Returns:
        names of the layers with weights that are now trainable.
    """
    pattern = re.compile(regex)
    trainable = []
    for layer in keras_model.layers:
        if not layer.weights:
            continue
        on = bool(pattern.fullmatch(layer.name))
        if isinstance(layer, keras.layers.BatchNormalization):
            on = on and bool(train_head_bn if layer.name.startswith("mrcnn_") else train_bn)
        layer.trainable = on
        if on:
            trainable.append(layer.name)
    return trainable


@keras.saving.register_keras_serializable(package="mrcnn")
class WarmupStepSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from ``warmup_factor * lr`` to ``lr``, then x``decay_factor`` at each
    step listed in ``decay_steps`` (global optimizer steps)."""

    def __init__(self, learning_rate, warmup_steps=0, warmup_factor=0.001, decay_steps=(),
                 decay_factor=0.1, start_step=0):
        self.learning_rate = float(learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)
        self.decay_steps = [int(s) for s in decay_steps]
        self.decay_factor = float(decay_factor)
        self.start_step = int(start_step)

    def __call__(self, step):
        ops = keras.ops
        step = ops.cast(step, "float32") + float(self.start_step)
        lr = ops.convert_to_tensor(self.learning_rate, "float32")
        if self.warmup_steps > 0:
            frac = ops.minimum(step / float(self.warmup_steps), 1.0)
            lr = lr * (self.warmup_factor + (1.0 - self.warmup_factor) * frac)
        for boundary in self.decay_steps:
            lr = ops.where(step >= float(boundary), lr * self.decay_factor, lr)
        return lr

    def get_config(self):
        return {"learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps,
                "warmup_factor": self.warmup_factor, "decay_steps": self.decay_steps,
                "decay_factor": self.decay_factor, "start_step": self.start_step}


def make_optimizer(config, learning_rate, start_step=0):
    """SGD with momentum and per-tensor gradient clipping (Matterport's choice), with the
    Config's warm-up (``LEARNING_RATE_WARMUP_STEPS``) and step decay
    (``LEARNING_RATE_DECAY_STEPS``) as a schedule."""
    schedule = WarmupStepSchedule(
        learning_rate, warmup_steps=getattr(config, "LEARNING_RATE_WARMUP_STEPS", 0),
        decay_steps=getattr(config, "LEARNING_RATE_DECAY_STEPS", ()), start_step=start_step)
    kwargs = {}
    if config.GRADIENT_CLIP_NORM:
        kwargs["clipnorm"] = float(config.GRADIENT_CLIP_NORM)
    return keras.optimizers.SGD(learning_rate=schedule, momentum=config.LEARNING_MOMENTUM,
                                **kwargs)


class CheckpointCallback(keras.callbacks.Callback):
    """Write ``path_pattern.format(epoch=N)`` by layer name after every epoch, atomically.

    A crash while writing leaves earlier checkpoints intact and no half-written file.
    """

    def __init__(self, path_pattern):
        super().__init__()
        self.path_pattern = path_pattern
        self.last_path = None

    def on_epoch_end(self, epoch, logs=None):
        self.last_path = save_weights_by_name(self.model, self.path_pattern.format(epoch=epoch + 1))
        state = save_optimizer_state(self.model, optimizer_state_path(self.last_path))
        if state:  # only the newest optimizer state is kept (it is as large as the weights)
            folder = os.path.dirname(os.path.abspath(state))
            for name in os.listdir(folder):
                stale = os.path.join(folder, name)
                if name.endswith(".optimizer.npz") and stale != os.path.abspath(state):
                    os.remove(stale)


def optimizer_state_path(checkpoint_path):
    """``.../mask_rcnn_x_0005.weights.h5`` -> ``.../mask_rcnn_x_0005.optimizer.npz``."""
    base = checkpoint_path[:-len(".weights.h5")] if checkpoint_path.endswith(".weights.h5") \
        else os.path.splitext(checkpoint_path)[0]
    return base + ".optimizer.npz"


def _trainable_paths(keras_model):
    return np.array([v.path for v in keras_model.trainable_variables], dtype=str)


def save_optimizer_state(keras_model, path):
    """Write the optimizer's variables (momentum slots) and the trainable variables they
    belong to, atomically, as a plain ``.npz`` (no pickle)."""
    optimizer = keras_model.optimizer
    if optimizer is None or not optimizer.built:
        return None
    arrays = {f"v{i:05d}": keras.ops.convert_to_numpy(v)
              for i, v in enumerate(optimizer.variables)}
    arrays["trainable_paths"] = _trainable_paths(keras_model)
    with atomic_target(path, ".npz.tmp") as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return os.path.abspath(path)


def restore_optimizer_state(keras_model, path):
    """Load momentum slots written by :func:`save_optimizer_state` into the compiled model's
    optimizer, if they were saved for the same trainable variables.

    The step counter is reset to 0 because the learning-rate schedule already starts at the
    resumed epoch's step. Returns True when the state was restored.
    """
    with np.load(path, allow_pickle=False) as data:
        if not np.array_equal(data["trainable_paths"], _trainable_paths(keras_model)):
            log.info("%s was saved for other trainable layers; momentum starts from zero.", path)
            return False
        values = [data[k] for k in sorted(k for k in data.files if k.startswith("v"))]
    optimizer = keras_model.optimizer
    if not optimizer.built:
        optimizer.build(keras_model.trainable_variables)
    variables = optimizer.variables
    if len(values) != len(variables) or any(
            tuple(v.shape) != a.shape for v, a in zip(variables, values)):
        log.info("%s does not fit this optimizer; momentum starts from zero.", path)
        return False
    for variable, value in zip(variables, values):
        variable.assign(value)
    optimizer.iterations.assign(0)
    log.info("Optimizer state restored from %s", path)
    return True


class LearningRateLogger(keras.callbacks.Callback):
    """Add the current learning rate to the epoch logs (TensorBoard shows it)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            lr = self.model.optimizer.learning_rate
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(lr))


class TimeBudget(keras.callbacks.Callback):
    """Stop training cleanly once ``deadline`` (time.time() seconds) has passed.

    Checked after every batch; the epoch in progress ends there and its checkpoint is written.
    """

    def __init__(self, deadline):
        super().__init__()
        self.deadline = deadline
        self.expired = False

    def on_train_batch_end(self, batch, logs=None):
        if time.time() >= self.deadline:
            self.expired = True
            self.model.stop_training = True


class EpochSummary(keras.callbacks.Callback):
    """Log one line per epoch with every loss."""

    def on_epoch_end(self, epoch, logs=None):
        parts = " ".join(f"{k}={v:.4f}" for k, v in sorted((logs or {}).items())
                         if isinstance(v, (int, float, np.floating)) and math.isfinite(v))
        log.info("epoch %d: %s", epoch + 1, parts)


def checkpoint_pattern(log_dir, name):
    """``<log_dir>/mask_rcnn_<name>_{epoch:04d}.weights.h5`` as a format string."""
    return os.path.join(log_dir, f"mask_rcnn_{name.lower()}_{{epoch:04d}}.weights.h5")
