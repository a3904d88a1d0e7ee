"""The optimizer of a training stage: SGD with momentum (Matterport's) or AdamW, with the
Config's learning-rate schedule and per-tensor gradient clipping.

AdamW runs as :class:`FusedAdamW` on TensorFlow outside distribution strategies: Keras's
AdamW, clipping and decay with the same variables and results, but each tensor's clipping
and Adam update are one pass over memory instead of about fifteen.
"""

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


def make_optimizer(config, learning_rate, start_step=0, fused=None):
    """A fresh optimizer for one stage: ``config.OPTIMIZER`` with the Config's schedule
    (:func:`mrcnn.schedules.make_schedule`: warm-up, then step decay or cosine) starting at
    global step ``start_step``, clipping each gradient tensor to GRADIENT_CLIP_NORM.
    ``fused``: AdamW as :class:`FusedAdamW` (True), as Keras's (False), or the first
    wherever it runs (None, :func:`fused_adamw_available`)."""
    schedule = make_schedule(config, learning_rate, start_step)
    kwargs = {}
    if config.GRADIENT_CLIP_NORM:
        kwargs["clipnorm"] = float(config.GRADIENT_CLIP_NORM)
    if config.OPTIMIZER == "adamw":
        if fused is None:
            fused = fused_adamw_available()
        optimizer = (FusedAdamW if fused else keras.optimizers.AdamW)(
            learning_rate=schedule, weight_decay=float(config.WEIGHT_DECAY), **kwargs)
        optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY_NAMES))
    elif config.OPTIMIZER == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate=schedule,
                                         momentum=config.LEARNING_MOMENTUM, **kwargs)
    else:
        raise ValueError(f"OPTIMIZER={config.OPTIMIZER!r}; use one of {OPTIMIZERS}.")
    return remember_schedule(optimizer, schedule)


def fused_adamw_available():
    """Whether :class:`FusedAdamW` can run here: the TensorFlow backend and no distribution
    strategy in scope (a mirrored variable's update is made per replica copy, which the fused
    kernel's slot lookup does not follow; Keras's AdamW runs there)."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf
    return not tf.distribute.has_strategy()


@keras.saving.register_keras_serializable(package="mrcnn")
class FusedAdamW(keras.optimizers.Optimizer):
    """Keras's AdamW (``keras.optimizers.AdamW``: decoupled weight decay applied before the
    step, ``exclude_from_weight_decay``, per-tensor ``clipnorm``) with each variable's Adam
    update in TensorFlow's fused ``ResourceApplyAdam`` kernel.

    Keras's update makes about fifteen passes over each tensor's memory (the moment updates,
    square root, division and scaling each write a temporary the size of the weights, and
    per-tensor clipping two more); the fused kernel reads the gradient and moments and writes
    the moments and weights once, and the clipping norm is a dot product whose rescaling is
    skipped when the norm is within ``clipnorm``. The update is Adam's: with t the step
    (1-based), m += (1 - beta_1) (g - m), v += (1 - beta_2) (g^2 - v), and
    w -= lr sqrt(1 - beta_2^t) / (1 - beta_1^t) m / (sqrt(v) + epsilon), so results match
    Keras's to float rounding. Its variables (the step count, the learning rate when it is a
    number, then each trainable variable's momentum and velocity, interleaved) are created
    in the same order, with the same names and shapes, as Keras's AdamW's, so optimizer
    states saved by either load into the other (:func:`mrcnn.training.restore_optimizer_state`).

    Only for the TensorFlow backend without a distribution strategy
    (:func:`fused_adamw_available`); :func:`make_optimizer` uses Keras's AdamW elsewhere.
    """

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-7, clipnorm=None, name="adam_w", **kwargs):
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, name=name,
                         **kwargs)
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)
        self.per_tensor_clip_norm = None if clipnorm is None else float(clipnorm)
        self.moment_slots = {}

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        for variable in var_list:
            momentum = self.add_variable_from_reference(variable, "momentum")
            velocity = self.add_variable_from_reference(variable, "velocity")
            self.moment_slots[self._slot_key(variable)] = (momentum, velocity)

    @staticmethod
    def _slot_key(variable):
        """The TensorFlow variable an update receives, for a Keras variable or itself."""
        return id(variable.value if isinstance(variable, keras.Variable) else variable)

    def _clipped(self, gradient):
        import tensorflow as tf
        if self.per_tensor_clip_norm is None:
            return gradient
        flat = tf.reshape(gradient, (1, -1))
        norm = tf.sqrt(tf.squeeze(tf.matmul(flat, flat, transpose_b=True)))
        limit = tf.constant(self.per_tensor_clip_norm, gradient.dtype)
        return tf.cond(norm > limit, lambda: gradient * (limit / norm), lambda: gradient)

    def update_step(self, gradient, variable, learning_rate):
        import tensorflow as tf
        slots = self.moment_slots.get(self._slot_key(variable))
        if slots is None:
            raise ValueError(f"FusedAdamW was not built for the variable {variable.name}; "
                             "build it on the trainable variables it updates.")
        momentum, velocity = slots
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.constant(self.beta_1, dtype), tf.constant(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=momentum.value.handle, v=velocity.value.handle,
            beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
            epsilon=tf.constant(self.epsilon, dtype),
            grad=tf.cast(self._clipped(gradient), dtype), use_locking=False)

    def get_config(self):
        config = super().get_config()
        config.update(beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon,
                      clipnorm=self.per_tensor_clip_norm)
        return config
