"""The optimizer of a training stage: SGD with momentum (Matterport's) or AdamW, with the
Config's learning-rate schedule and per-tensor gradient clipping."""

import keras

from mrcnn.schedules import make_schedule, remember_schedule

OPTIMIZERS = ("sgd", "adamw")

# Variables AdamW does not decay: biases and the scales/offsets of every normalisation
# (BatchNorm, GroupNorm), matched against Keras variable names.
NO_DECAY_NAMES = ("bias", "gamma", "beta")


def l2_loss_decay(config):
    """The coefficient of the L2 weight-decay loss term: WEIGHT_DECAY under SGD, 0 under
    AdamW, whose decay is decoupled (applied by the optimizer, not through the loss)."""
    return float(config.WEIGHT_DECAY) if config.OPTIMIZER == "sgd" else 0.0


def make_optimizer(config, learning_rate, start_step=0):
    """A fresh optimizer for one stage: ``config.OPTIMIZER`` with the Config's schedule
    (:func:`mrcnn.schedules.make_schedule`: warm-up, then step decay or cosine) starting at
    global step ``start_step``, clipping each gradient tensor to GRADIENT_CLIP_NORM."""
    schedule = make_schedule(config, learning_rate, start_step)
    kwargs = {}
    if config.GRADIENT_CLIP_NORM:
        kwargs["clipnorm"] = float(config.GRADIENT_CLIP_NORM)
    if config.OPTIMIZER == "adamw":
        optimizer = keras.optimizers.AdamW(learning_rate=schedule,
                                           weight_decay=float(config.WEIGHT_DECAY), **kwargs)
        optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY_NAMES))
    elif config.OPTIMIZER == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate=schedule,
                                         momentum=config.LEARNING_MOMENTUM, **kwargs)
    else:
        raise ValueError(f"OPTIMIZER={config.OPTIMIZER!r}; use one of {OPTIMIZERS}.")
    return remember_schedule(optimizer, schedule)
