"""Training: run folders and checkpoints, layer selection, optimizer and schedule, callbacks,
and :func:`fit`, one ``train()`` stage of the :class:`mrcnn.model.MaskRCNN` facade."""

import datetime
import glob
import logging
import math
import os
import re
import time

import keras
import numpy as np
import tensorflow as tf

from mrcnn import multi_worker
from mrcnn.atomic import atomic_target
from mrcnn.data.generator import DataGenerator
from mrcnn.monitoring import DetectionMetricsCallback
from mrcnn.optimizers import make_optimizer  # noqa: F401 (importable here as before)
from mrcnn.schedules import (WarmupStepSchedule,  # noqa: F401 (importable here as before)
                             keep_step_count, progress_callbacks, resume_progress,
                             saved_progress)
from mrcnn.weights import average_weight_files, save_weights_by_name

log = logging.getLogger(__name__)

_CHECKPOINT_RE = re.compile(
    r".*[/\\][\w-]+(\d{8}T\d{4})[/\\]mask_rcnn_[\w-]+_(\d{4})\.weights\.h5$")


def run_folder(model_dir, name, checkpoint_path=None):
    """Where a run's checkpoints go, and the epoch it continues from.

    A new ``<model_dir>/<name><YYYYmmddTHHMM>`` folder at epoch 0, or, for a checkpoint path
    inside such a folder (``mask_rcnn_<name>_NNNN.weights.h5``), that folder at epoch NNNN.

    Returns:
        (log_dir, checkpoint pattern with an ``{epoch:04d}`` field, epoch).
    """
    now, epoch = datetime.datetime.now(), 0
    match = _CHECKPOINT_RE.match(os.path.abspath(checkpoint_path)) if checkpoint_path else None
    if match:
        now = datetime.datetime.strptime(match.group(1), "%Y%m%dT%H%M")
        epoch = int(match.group(2))
    name = name.lower()
    log_dir = os.path.join(model_dir, f"{name}{now:%Y%m%dT%H%M}")
    return log_dir, checkpoint_pattern(log_dir, name), epoch


def find_last(model_dir, prefix, pattern):
    """The newest file matching ``pattern`` (a glob inside a run folder) in the newest
    ``<model_dir>/<prefix>*`` run folder that has one, or None."""
    runs = sorted(d for d in glob.glob(os.path.join(model_dir, f"{prefix}*")) if os.path.isdir(d))
    for run in reversed(runs):
        found = sorted(glob.glob(os.path.join(run, pattern)))
        if found:
            return found[-1]
    return None


def find_last_checkpoint(model_dir, name):
    """Newest ``mask_rcnn_<name>_NNNN.weights.h5`` of the newest ``<name><timestamp>`` run:
    the epoch checkpoint a run resumes from (never an average, see :func:`find_final_weights`).

    Raises:
        FileNotFoundError: no run folder or no checkpoint in it.
    """
    name = name.lower()
    found = find_last(model_dir, name, _epoch_checkpoint_glob(name))
    if found is None:
        raise FileNotFoundError(f"no checkpoint of {name!r} under {model_dir}: train first "
                                "or pass a weights path.")
    return found


def _epoch_checkpoint_glob(name):
    """The glob of a run folder's epoch checkpoints, :func:`checkpoint_pattern` with any
    four-digit epoch (so ``_average`` files never match)."""
    return os.path.basename(checkpoint_pattern("", name)).replace("{epoch:04d}", "[0-9]" * 4)


def averaged_checkpoint_path(checkpoint_path):
    """``mask_rcnn_<name>_NNNN.weights.h5`` -> ``mask_rcnn_<name>_NNNN_average.weights.h5``,
    the file :func:`average_last_checkpoints` writes for the epochs up to NNNN."""
    return re.sub(r"\.weights\.h5$", "_average.weights.h5", os.fspath(checkpoint_path))


def find_final_weights(model_dir, name):
    """The weights a finished run is used with: the newest epoch checkpoint's average
    (:func:`average_last_checkpoints`) when one was written, else that checkpoint.

    Raises:
        FileNotFoundError: no run folder or no checkpoint in it.
    """
    checkpoint = find_last_checkpoint(model_dir, name)
    averaged = averaged_checkpoint_path(checkpoint)
    return averaged if os.path.exists(averaged) else checkpoint


def average_last_checkpoints(log_dir, name, count, after_epoch=0):
    """Average the weights of a run folder's newest ``count`` epoch checkpoints later than
    ``after_epoch`` (the epochs of the last, low learning-rate stage) into
    :func:`averaged_checkpoint_path` of the newest one: checkpoint averaging, stochastic
    weight averaging (Izmailov et al., 2018) over epochs already saved, at no training cost.

    Returns:
        (path written or None when fewer than 2 checkpoints qualify, the epochs averaged).
    """
    found = glob.glob(os.path.join(log_dir, _epoch_checkpoint_glob(name)))
    by_epoch = sorted((int(re.search(r"_(\d{4})\.weights\.h5$", path).group(1)), path)
                      for path in found)
    chosen = [(epoch, path) for epoch, path in by_epoch if epoch > after_epoch][-count:]
    epochs = [epoch for epoch, _ in chosen]
    if len(chosen) < 2:
        return None, epochs
    out = average_weight_files([path for _, path in chosen],
                               averaged_checkpoint_path(chosen[-1][1]))
    log.info("Averaged the checkpoints of epochs %d-%d into %s", epochs[0], epochs[-1], out)
    return out, epochs


def distribution_strategy(config):
    """MultiWorkerMirroredStrategy when TF_CONFIG describes several workers (see
    :mod:`mrcnn.multi_worker`), else MirroredStrategy over GPU_COUNT devices (GPUs, else
    logical CPUs), or the default strategy."""
    if multi_worker.is_multi_worker():
        return tf.distribute.MultiWorkerMirroredStrategy()
    if config.GPU_COUNT <= 1:
        return tf.distribute.get_strategy()
    gpus = tf.config.list_logical_devices("GPU")
    devices = gpus if len(gpus) >= config.GPU_COUNT else tf.config.list_logical_devices("CPU")
    if len(devices) < config.GPU_COUNT:
        raise ValueError(f"GPU_COUNT={config.GPU_COUNT} but only {len(devices)} devices exist.")
    return tf.distribute.MirroredStrategy([d.name for d in devices[:config.GPU_COUNT]])

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


class CheckpointCallback(keras.callbacks.Callback):
    """Write ``path_pattern.format(epoch=N)`` by layer name after every epoch, atomically.

    A crash while writing leaves earlier checkpoints intact and no half-written file. With
    ``keep`` (CHECKPOINTS_TO_KEEP), once the new checkpoint is written only the newest ``keep``
    epoch checkpoints of its folder stay (:func:`prune_checkpoints`); None keeps them all.
    """

    def __init__(self, path_pattern, keep=None):
        super().__init__()
        self.path_pattern = path_pattern
        self.keep = keep
        self.last_path = None

    def on_epoch_end(self, epoch, logs=None):
        self.last_path = save_weights_by_name(self.model, self.path_pattern.format(epoch=epoch + 1))
        if self.keep:
            prune_checkpoints(self.last_path, self.keep)
        state = save_optimizer_state(self.model, optimizer_state_path(self.last_path))
        if state:  # only the newest optimizer state is kept (it is as large as the weights)
            folder = os.path.dirname(os.path.abspath(state))
            for name in os.listdir(folder):
                stale = os.path.join(folder, name)
                if name.endswith(".optimizer.npz") and stale != os.path.abspath(state):
                    os.remove(stale)


def prune_checkpoints(newest_path, keep):
    """Delete all but the ``keep`` newest epoch checkpoints beside ``newest_path``.

    Only files named like it, ``mask_rcnn_<name>_NNNN.weights.h5`` with the same name, in the
    same folder, count; averages, optimizer states and other files are never touched, nor is
    ``newest_path`` itself or any checkpoint of a later epoch (a resumed run's own). Returns
    the deleted paths.
    """
    folder, base = os.path.split(os.path.abspath(newest_path))
    match = re.fullmatch(r"(mask_rcnn_[\w-]+_)(\d{4})\.weights\.h5", base)
    if not match or keep < 1:
        return []
    prefix, newest = match.group(1), int(match.group(2))
    epochs = sorted(int(m.group(1)) for m in (
        re.fullmatch(re.escape(prefix) + r"(\d{4})\.weights\.h5", name)
        for name in os.listdir(folder)) if m)
    older = [e for e in epochs if e < newest]           # kept: newest and keep - 1 of these
    stale = older[:max(0, len(older) - (keep - 1))]
    removed = []
    for e in stale:
        path = os.path.join(folder, f"{prefix}{e:04d}.weights.h5")
        os.remove(path)
        removed.append(path)
    return removed


def optimizer_state_path(checkpoint_path):
    """``.../mask_rcnn_x_0005.weights.h5`` -> ``.../mask_rcnn_x_0005.optimizer.npz``."""
    base = checkpoint_path[:-len(".weights.h5")] if checkpoint_path.endswith(".weights.h5") \
        else os.path.splitext(checkpoint_path)[0]
    return base + ".optimizer.npz"


def _trainable_paths(keras_model):
    return np.array([v.path for v in keras_model.trainable_variables], dtype=str)


def save_optimizer_state(keras_model, path):
    """Write the optimizer's variables (its step count and SGD's momentum or AdamW's moment
    slots) and the trainable variables they belong to, atomically, as a plain ``.npz`` (no
    pickle)."""
    optimizer = keras_model.optimizer
    if optimizer is None or not optimizer.built:
        return None
    arrays = {f"v{i:05d}": keras.ops.convert_to_numpy(v)
              for i, v in enumerate(optimizer.variables)}
    arrays["trainable_paths"] = _trainable_paths(keras_model)
    progress = saved_progress(optimizer)
    if progress is not None:
        arrays["schedule"] = np.array(progress)
    with atomic_target(path, ".npz.tmp") as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return os.path.abspath(path)


def restore_optimizer_state(keras_model, path):
    """Load the slots written by :func:`save_optimizer_state` into the compiled model's
    optimizer, if they were saved for the same trainable variables.

    The step counter keeps its saved value (AdamW's bias correction counts it) and the
    learning-rate schedule, which already starts at the resumed epoch's step, is shifted back
    by as many steps (:func:`mrcnn.schedules.keep_step_count`). A cosine schedule at the
    same learning rate (the same stage) also continues from the saved progress. Returns True
    when the state was restored.
    """
    with np.load(path, allow_pickle=False) as data:
        if not np.array_equal(data["trainable_paths"], _trainable_paths(keras_model)):
            log.info("%s was saved for other trainable layers; momentum starts from zero.", path)
            return False
        values = [data[k] for k in sorted(k for k in data.files if k.startswith("v"))]
        saved_schedule = data["schedule"] if "schedule" in data.files else None
    if resume_progress(keras_model.optimizer, saved_schedule) is not None:
        log.info("Cosine schedule resumed at %.0f %% of its stage", 100 * saved_schedule[1])
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
    keep_step_count(optimizer)
    log.info("Optimizer state restored from %s", path)
    return True


class LearningRateLogger(keras.callbacks.Callback):
    """Add the current learning rate and the number of trainable weight tensors to the epoch
    logs (TensorBoard and history.csv show them)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            lr = self.model.optimizer.learning_rate
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(lr))
            logs["trainable_weights"] = len(self.model.trainable_weights)


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


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the checkpoints of earlier epochs are kept."""


class DivergenceGuard(keras.callbacks.Callback):
    """Stop on a non-finite loss before the epoch's checkpoint is written, and warn loudly when
    the loss climbs orders of magnitude above the lowest value seen (detectron2 stops on
    non-finite losses in the same way).

    Raises:
        TrainingDiverged: naming the epoch and step, and the newest checkpoint left intact.
    """

    def __init__(self, checkpoint_dir, growth_warning=100.0):
        super().__init__()
        self.checkpoint_dir = checkpoint_dir
        self.growth_warning = float(growth_warning)
        self.epoch = 0
        self.lowest = math.inf
        self.warned_epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss):
            self.model.stop_training = True
            kept = sorted(glob.glob(os.path.join(self.checkpoint_dir, "*.weights.h5")))
            raise TrainingDiverged(
                f"training diverged: the loss became {loss} at epoch {self.epoch + 1}, step "
                f"{batch + 1}; nothing of this epoch was saved, the newest checkpoint is "
                f"{kept[-1] if kept else 'none (it diverged in the first epoch)'}. Lower the "
                "learning rate (--lr) or raise LEARNING_RATE_WARMUP_STEPS.")
        if loss > self.growth_warning * self.lowest and self.warned_epoch != self.epoch:
            self.warned_epoch = self.epoch
            log.warning("the loss %.3g at epoch %d, step %d is %.0fx its lowest running value "
                        "%.3g: training may be diverging (learning rate too high?)", loss,
                        self.epoch + 1, batch + 1, loss / self.lowest, self.lowest)
        if batch >= 10:  # the first steps' running mean is noise
            self.lowest = min(self.lowest, loss)


class EpochSummary(keras.callbacks.Callback):
    """Log one line per epoch with every loss."""

    def on_epoch_end(self, epoch, logs=None):
        parts = " ".join(f"{k}={v:.4f}" for k, v in sorted((logs or {}).items())
                         if isinstance(v, (int, float, np.floating)) and math.isfinite(v))
        log.info("epoch %d: %s", epoch + 1, parts)


def validation_epochs(initial_epoch, epochs, every):
    """The 1-based epochs of a stage (``initial_epoch`` done, up to ``epochs``) that compute
    the validation losses: every ``every``-th, the stage's first and its last."""
    ends = (initial_epoch + 1, epochs)
    return [e for e in range(initial_epoch + 1, epochs + 1) if e % every == 0 or e in ends]


def checkpoint_pattern(log_dir, name):
    """``<log_dir>/mask_rcnn_<name>_{epoch:04d}.weights.h5`` as a format string."""
    return os.path.join(log_dir, f"mask_rcnn_{name.lower()}_{{epoch:04d}}.weights.h5")


def _compile_stage(keras_model, config, strategy, regex, train_bn, learning_rate,
                   initial_epoch, optimizer_state, build=False):
    """Select the stage's trainable layers and compile a fresh optimizer (OPTIMIZER) whose
    schedule starts at the stage's global step, with the slots of ``optimizer_state`` when
    resuming. ``build`` creates the optimizer's variables now (a custom loop must not create
    them inside ``strategy.run``)."""
    with strategy.scope():
        if not set_trainable(keras_model, regex, train_bn, config.TRAIN_HEAD_BN):
            raise ValueError(f"the layers regex {regex!r} selects no layer with weights.")
        keras_model.compile(
            optimizer=make_optimizer(config, learning_rate,
                                     initial_epoch * config.STEPS_PER_EPOCH),
            jit_compile=False)
        if build:
            keras_model.optimizer.build(keras_model.trainable_variables)
        if optimizer_state:
            restore_optimizer_state(keras_model, optimizer_state)


def fit(keras_model, config, *, strategy, regex, train_bn, train_dataset, val_dataset,
        learning_rate, epochs, initial_epoch, log_dir, checkpoint_path, optimizer_state=None,
        augmentation=None, custom_callbacks=None, time_budget_seconds=None, seed=None,
        verbose=1):
    """One training stage: the layers matching ``regex`` from ``initial_epoch`` to ``epochs``.

    Compiles a fresh optimizer (OPTIMIZER) whose schedule starts at the stage's global step,
    restores the slots of ``optimizer_state`` (a checkpoint's ``.optimizer.npz``) when given,
    and writes a checkpoint after every epoch, TensorBoard logs and, every
    EVAL_EVERY_N_EPOCHS, detection metrics.

    Returns:
        the keras History of this stage, with ``skipped_images``: the paths of the training
        images that could not be loaded and were skipped.
    """
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return _fit_multi_worker(
            keras_model, config, strategy=strategy, regex=regex, train_bn=train_bn,
            train_dataset=train_dataset, learning_rate=learning_rate, epochs=epochs,
            initial_epoch=initial_epoch, log_dir=log_dir, checkpoint_path=checkpoint_path,
            optimizer_state=optimizer_state, augmentation=augmentation,
            time_budget_seconds=time_budget_seconds, seed=seed, verbose=verbose)
    train_gen = DataGenerator(train_dataset, config, shuffle=True, augmentation=augmentation,
                              steps=config.STEPS_PER_EPOCH, seed=seed,
                              workers=max(1, config.WORKERS),
                              use_multiprocessing=config.WORKERS > 0)
    val_gen = None
    if val_dataset is not None:
        val_gen = DataGenerator(val_dataset, config, shuffle=True,
                                steps=config.VALIDATION_STEPS, seed=seed)
    os.makedirs(log_dir, exist_ok=True)
    callbacks = [LearningRateLogger()]
    if val_dataset is not None and config.EVAL_EVERY_N_EPOCHS > 0:
        callbacks.append(DetectionMetricsCallback(
            val_dataset, config, log_dir, every=config.EVAL_EVERY_N_EPOCHS,
            num_images=config.EVAL_IMAGES))
    # The guard runs before the checkpoint callback: a diverged epoch is never saved.
    callbacks += [DivergenceGuard(log_dir),
                  keras.callbacks.TensorBoard(log_dir=log_dir, write_graph=False),
                  keras.callbacks.CSVLogger(os.path.join(log_dir, "history.csv"), append=True),
                  CheckpointCallback(checkpoint_path, config.CHECKPOINTS_TO_KEEP), EpochSummary()]
    if time_budget_seconds:
        callbacks.append(TimeBudget(time.time() + time_budget_seconds))
    callbacks += list(custom_callbacks or [])

    _compile_stage(keras_model, config, strategy, regex, train_bn, learning_rate, initial_epoch,
                   optimizer_state)
    callbacks = progress_callbacks(keras_model.optimizer,
                                   (epochs - initial_epoch) * config.STEPS_PER_EPOCH,
                                   time_budget_seconds) + callbacks
    history = keras_model.fit(
        train_gen, initial_epoch=initial_epoch, epochs=epochs,
        steps_per_epoch=config.STEPS_PER_EPOCH, validation_data=val_gen,
        validation_steps=config.VALIDATION_STEPS if val_gen else None,
        validation_freq=validation_epochs(initial_epoch, epochs,
                                          int(config.VALIDATION_EVERY_N_EPOCHS)),
        callbacks=callbacks, verbose=verbose)
    history.skipped_images = train_gen.skipper.skipped()
    return history


def _fit_multi_worker(keras_model, config, *, strategy, regex, train_bn, train_dataset,
                      learning_rate, epochs, initial_epoch, log_dir, checkpoint_path,
                      optimizer_state, augmentation, time_budget_seconds, seed, verbose):
    """:func:`fit` across workers (:mod:`mrcnn.multi_worker`): each worker its image shard; the
    chief alone writes checkpoints, history.csv and TensorBoard scalars. Validation is not
    run across workers (evaluate the checkpoints instead)."""
    workers, index, chief = multi_worker.cluster()
    generator = DataGenerator(train_dataset, config, shuffle=True, augmentation=augmentation,
                              steps=config.STEPS_PER_EPOCH, seed=seed, shard=(index, workers))
    if config.LEARNING_RATE_SCHEDULE == "cosine" and time_budget_seconds:
        raise ValueError("LEARNING_RATE_SCHEDULE='cosine' with a time budget is not supported "
                         "across workers (each would decay by its own clock); give epochs "
                         "instead of a time budget, or use the 'step' schedule.")
    _compile_stage(keras_model, config, strategy, regex, train_bn, learning_rate, initial_epoch,
                   optimizer_state, build=True)
    callbacks = progress_callbacks(keras_model.optimizer,
                                   (epochs - initial_epoch) * config.STEPS_PER_EPOCH)
    callbacks.append(DivergenceGuard(log_dir))
    if chief:
        os.makedirs(log_dir, exist_ok=True)
        callbacks = [LearningRateLogger()] + callbacks + [
            keras.callbacks.CSVLogger(os.path.join(log_dir, "history.csv"), append=True),
            CheckpointCallback(checkpoint_path, config.CHECKPOINTS_TO_KEEP), EpochSummary()]
    history = multi_worker.fit_multi_worker(
        keras_model, config, generator, strategy=strategy, epochs=epochs,
        initial_epoch=initial_epoch, callbacks=callbacks, log_dir=log_dir,
        time_budget_seconds=time_budget_seconds, verbose=verbose)
    history.skipped_images = generator.skipper.skipped()
    return history
