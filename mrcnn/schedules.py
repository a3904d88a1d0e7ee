"""Learning-rate schedules of a training stage, and the callback that tells a cosine schedule
how far through its stage (epochs or time budget) training is.

``Config.LEARNING_RATE_SCHEDULE``:

* ``"step"`` (Matterport's, the default): linear warm-up over ``LEARNING_RATE_WARMUP_STEPS``,
  then the stage's learning rate, x0.1 at each global step in ``LEARNING_RATE_DECAY_STEPS``.
* ``"cosine"``: the same warm-up, times ``0.5 * (1 + cos(pi * progress))``, where progress
  runs from 0 to 1 over the stage: the larger of the share of its epochs done and the share of
  its time budget spent, so a stage that a time budget ends decays to 0 by the deadline
  wherever the epoch count lands. The progress is saved with the optimizer state and a resumed
  stage continues from it.
"""

import math
import time
import weakref

import keras

SCHEDULES = ("step", "cosine")
_SCHEDULES = weakref.WeakKeyDictionary()


def remember_schedule(optimizer, schedule):
    """Record ``schedule`` as ``optimizer``'s (Keras keeps it in a private attribute) and
    return the optimizer."""
    _SCHEDULES[optimizer] = schedule
    return optimizer


def schedule_of(optimizer):
    """The schedule :func:`remember_schedule` recorded for ``optimizer``, or None."""
    return _SCHEDULES.get(optimizer)


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

    def warmed_up(self, step):
        """The learning rate after the warm-up factor at optimizer step ``step``."""
        ops = keras.ops
        step = ops.cast(step, "float32") + float(self.start_step)
        lr = ops.convert_to_tensor(self.learning_rate, "float32")
        if self.warmup_steps > 0:
            frac = ops.minimum(step / float(self.warmup_steps), 1.0)
            lr = lr * (self.warmup_factor + (1.0 - self.warmup_factor) * frac)
        return lr, step

    def __call__(self, step):
        lr, step = self.warmed_up(step)
        for boundary in self.decay_steps:
            lr = keras.ops.where(step >= float(boundary), lr * self.decay_factor, lr)
        return lr

    def get_config(self):
        return {"learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps,
                "warmup_factor": self.warmup_factor, "decay_steps": self.decay_steps,
                "decay_factor": self.decay_factor, "start_step": self.start_step}


@keras.saving.register_keras_serializable(package="mrcnn")
class WarmupCosineSchedule(WarmupStepSchedule):
    """The warm-up of :class:`WarmupStepSchedule`, times ``0.5 * (1 + cos(pi * progress))``.

    ``progress`` is a non-trainable scalar variable in [0, 1] that :class:`StageProgress`
    sets from the epochs done and the time spent (a time budget is unknown to the graph).
    """

    def __init__(self, learning_rate, warmup_steps=0, warmup_factor=0.001, start_step=0):
        super().__init__(learning_rate, warmup_steps, warmup_factor, start_step=start_step)
        self.progress = keras.Variable(0.0, dtype="float32", trainable=False,
                                       name="schedule_progress")

    def __call__(self, step):
        lr, _ = self.warmed_up(step)
        progress = keras.ops.clip(keras.ops.cast(self.progress, "float32"), 0.0, 1.0)
        return lr * 0.5 * (1.0 + keras.ops.cos(math.pi * progress))

    def get_config(self):
        return {"learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps,
                "warmup_factor": self.warmup_factor, "start_step": self.start_step}


def make_schedule(config, learning_rate, start_step=0):
    """The Config's schedule (``LEARNING_RATE_SCHEDULE``) for a stage at ``learning_rate``
    whose first optimizer step is global step ``start_step``."""
    if config.LEARNING_RATE_SCHEDULE == "cosine":
        return WarmupCosineSchedule(learning_rate, config.LEARNING_RATE_WARMUP_STEPS,
                                    start_step=start_step)
    return WarmupStepSchedule(learning_rate, warmup_steps=config.LEARNING_RATE_WARMUP_STEPS,
                              decay_steps=config.LEARNING_RATE_DECAY_STEPS,
                              start_step=start_step)


def keep_step_count(optimizer):
    """After a resume restored ``optimizer.iterations`` (the steps it had taken, which AdamW's
    bias correction needs), shift its schedule back by as many steps so that the learning rate
    still starts at the stage's global step. An optimizer without a remembered schedule gets
    its count reset to 0 instead. Call before the first training step is traced."""
    schedule = schedule_of(optimizer)
    if schedule is None:
        optimizer.iterations.assign(0)
    else:
        schedule.start_step -= int(keras.ops.convert_to_numpy(optimizer.iterations))


def stage_progress(start_progress, step_fraction, time_fraction):
    """Progress through a stage resumed at ``start_progress``: what remained of it is done in
    the larger of the shares of the remaining steps and of the time budget (each in [0, 1])."""
    done = min(1.0, max(step_fraction, time_fraction, 0.0))
    return start_progress + (1.0 - start_progress) * done


def saved_progress(optimizer):
    """``[learning_rate, progress]`` of ``optimizer``'s cosine schedule, to save with its
    state, or None for any other schedule."""
    schedule = schedule_of(optimizer)
    if isinstance(schedule, WarmupCosineSchedule):
        return [schedule.learning_rate, float(keras.ops.convert_to_numpy(schedule.progress))]
    return None


def resume_progress(optimizer, saved):
    """Continue ``optimizer``'s cosine schedule from ``saved`` (:func:`saved_progress`'s
    pair, or None) when it belongs to the same stage, i.e. the same learning rate. Returns
    the progress restored, or None."""
    schedule = schedule_of(optimizer)
    if (saved is None or not isinstance(schedule, WarmupCosineSchedule)
            or not math.isclose(float(saved[0]), schedule.learning_rate)):
        return None
    schedule.progress.assign(float(saved[1]))
    return float(saved[1])


def progress_callbacks(optimizer, steps, budget_seconds=None):
    """``[StageProgress]`` when ``optimizer`` (from :func:`mrcnn.optimizers.make_optimizer`)
    runs a cosine schedule, else ``[]``: what a fit of at most ``steps`` optimizer steps
    needs so the schedule follows its epochs and time budget."""
    schedule = schedule_of(optimizer)
    if isinstance(schedule, WarmupCosineSchedule):
        return [StageProgress(schedule, steps, budget_seconds)]
    return []


class StageProgress(keras.callbacks.Callback):
    """Set a :class:`WarmupCosineSchedule`'s progress after every batch.

    ``steps`` is the number of optimizer steps this fit runs at most, ``budget_seconds`` its
    time budget (None: epochs only). The progress the schedule holds when training begins
    (restored from a checkpoint's optimizer state, else 0) is where the stage resumes.
    """

    def __init__(self, schedule, steps, budget_seconds=None):
        super().__init__()
        self.schedule = schedule
        self.steps = max(1, int(steps))
        self.budget_seconds = budget_seconds
        self.start_progress = 0.0
        self.started = None
        self.done_steps = 0

    def on_train_begin(self, logs=None):
        self.start_progress = float(keras.ops.convert_to_numpy(self.schedule.progress))
        self.started = time.time()
        self.done_steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self.done_steps += 1
        time_fraction = 0.0
        if self.budget_seconds:
            time_fraction = (time.time() - self.started) / self.budget_seconds
        self.schedule.progress.assign(stage_progress(
            self.start_progress, self.done_steps / self.steps, time_fraction))
