"""One normalisation choice for every backbone: trainable BatchNorm, frozen BatchNorm, GroupNorm.

Backbones are built with whatever normalisation their code uses (BatchNorm for ours and for
keras.applications); :func:`apply_norm` then rebuilds the functional graph with each
normalisation layer swapped for the chosen kind under the **same layer name**, reusing every
other layer (and its weights). Weight files therefore keep loading by name wherever the shapes
agree: the convolutions of a BatchNorm checkpoint load into a GroupNorm backbone and back.

* ``"batch"``  — trainable BatchNormalization (batch statistics in training).
* ``"frozen"`` — BatchNormalization in inference mode, not trained: right for pretrained
  weights and small batches (Matterport's ``TRAIN_BN = False``).
* ``"group"``  — GroupNormalization: each image is normalised by itself, so training and
  inference agree at batch size 1-2 and across image kinds; what trains from scratch
  (Wu & He, "Group Normalization", 2018; He, Girshick, Dollár, "Rethinking ImageNet
  Pre-training", 2019; detectron2's ``NORM: "GN"``).
"""

import logging
import math

import keras

log = logging.getLogger(__name__)

NORMS = ("batch", "frozen", "group")
MAX_GROUPS = 32


def group_count(channels, max_groups=MAX_GROUPS):
    """Groups for a GroupNormalization over ``channels``: the largest divisor of ``channels``
    that is at most ``max_groups`` among powers of two, i.e. ``gcd(max_groups, channels)``.

    32 for the usual widths (64, 128, 256, ...); MobileNetV2's 24 -> 8, 144 -> 16, 96 -> 32;
    an odd width -> 1 (LayerNorm over the channels). Always divides ``channels``.
    """
    channels = int(channels)
    if channels < 1:
        raise ValueError(f"cannot normalise {channels} channels")
    return math.gcd(int(max_groups), channels)


@keras.saving.register_keras_serializable(package="backbones")
class FastGroupNormalization(keras.layers.GroupNormalization):
    """keras.layers.GroupNormalization with the same weights (``gamma``, ``beta`` [C]), config
    and result, computed from per-channel statistics instead of a 5-D group reshape.

    For a channels-last input x [B, H, W, C] with G groups of C/G channels: the per-channel
    means over H, W are averaged within each group and broadcast back to [B, C]; the variance
    likewise (two passes, as ``tf.nn.moments``); then y = x * scale + shift with per-channel
    ``scale = gamma / sqrt(var + eps)`` and ``shift = beta - mean * scale`` [B, 1, 1, C]. Every
    big-tensor operation is then a per-channel reduction or broadcast, which TensorFlow's CPU
    kernels do faster than Keras's reduction over axes (1, 2, 4) of [B, H, W, G, C/G]. Quiet
    2-core Intel Xeon, float32 (benchmarks/bench_group_norm.py): 3x3 conv + GroupNorm + ReLU
    on [1, 256, 320, 64] (a nucleus image's C2 at 2x scale) 41 instead of 61 ms (the conv
    alone 25 ms), with the gradient 116 instead of 146 ms; the trained nucleus model's
    backbone + FPN 0.257 instead of 0.289 s per val image (detect 0.480 instead of 0.507 s);
    the nucleus training step on 256 px crops unchanged (0.469 vs 0.479 s). Statistics are
    computed in float32 under mixed precision. Other ranks or axes fall back to Keras's code.

    At inference (``training=False``, as ``detect`` calls the model) a single image on the
    TensorFlow backend takes a fused path: one TensorFlow FusedBatchNorm in training mode gives
    the per-channel mean and variance in one kernel, they are combined into each group's
    (``var_g = mean_c(var_c + (mean_c - mean_g)^2)``, no cancellation), and a second
    FusedBatchNorm in inference mode with the group statistics broadcast to the channels
    applies ``gamma * (x - mean_g) / sqrt(var_g + eps) + beta`` in one pass (which TensorFlow
    can fuse with a following ReLU). Same result to float rounding; its gradient would not
    reach the statistics, so training and batches of several images keep the path above.
    """

    def call(self, inputs, training=None):
        if len(inputs.shape) != 4 or self.axis not in (-1, 3) or inputs.shape[-1] is None:
            return super().call(inputs)
        if training is False and keras.backend.backend() == "tensorflow":
            return self._single_image_inference(inputs)
        return self._per_channel_statistics(inputs)

    def _single_image_inference(self, inputs):
        """The fused path for a batch of one, the general one otherwise (a graph branch)."""
        import tensorflow as tf
        x = tf.cast(inputs, "float32")
        outputs = tf.cond(tf.equal(tf.shape(x)[0], 1), lambda: self._fused(x),
                          lambda: tf.cast(self._per_channel_statistics(x), "float32"))
        return tf.cast(outputs, self.compute_dtype)

    def _fused(self, x):
        """GroupNorm of one image x [1, H, W, C] float32 by two FusedBatchNorm kernels."""
        import tensorflow as tf
        channels = x.shape[-1]
        per_group = channels // self.groups
        ones, zeros, empty = tf.ones([channels]), tf.zeros([channels]), tf.zeros([0])
        _, channel_mean, unbiased_var, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=ones, offset=zeros, mean=empty, variance=empty, epsilon=self.epsilon,
            is_training=True, exponential_avg_factor=1.0)
        pixels = tf.cast(tf.shape(x)[1] * tf.shape(x)[2], "float32")
        channel_var = unbiased_var * ((pixels - 1.0) / pixels)   # batch_variance is n-1
        grouped_mean = tf.reshape(channel_mean, (self.groups, per_group))
        group_mean = tf.reduce_mean(grouped_mean, axis=-1, keepdims=True)
        group_var = tf.reduce_mean(tf.reshape(channel_var, (self.groups, per_group)) +
                                   tf.square(grouped_mean - group_mean), axis=-1, keepdims=True)

        def per_channel(per_group_values):  # [G, 1] -> [C]
            return tf.reshape(tf.repeat(per_group_values, per_group, axis=-1), (channels,))

        gamma = tf.cast(self.gamma, "float32") if self.scale else ones
        beta = tf.cast(self.beta, "float32") if self.center else zeros
        outputs, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=gamma, offset=beta, mean=per_channel(group_mean),
            variance=per_channel(group_var), epsilon=self.epsilon, is_training=False)
        return outputs

    def _per_channel_statistics(self, inputs):
        x = keras.ops.cast(inputs, "float32")
        channels = x.shape[-1]
        per_group = channels // self.groups

        def group_mean(per_channel):  # [B, C] -> the mean of each group, repeated to [B, C]
            grouped = keras.ops.reshape(per_channel, (-1, self.groups, per_group))
            means = keras.ops.mean(grouped, axis=-1, keepdims=True)
            return keras.ops.reshape(keras.ops.repeat(means, per_group, axis=-1),
                                     (-1, channels))

        mean = group_mean(keras.ops.mean(x, axis=(1, 2)))
        centred = keras.ops.square(x - keras.ops.stop_gradient(mean)[:, None, None, :])
        variance = group_mean(keras.ops.mean(centred, axis=(1, 2)))
        scale = keras.ops.rsqrt(variance + self.epsilon)
        if self.scale:
            scale = scale * keras.ops.cast(self.gamma, "float32")
        shift = -mean * scale
        if self.center:
            shift = shift + keras.ops.cast(self.beta, "float32")
        outputs = x * scale[:, None, None, :] + shift[:, None, None, :]
        return keras.ops.cast(outputs, self.compute_dtype)


def _is_norm(layer):
    return isinstance(layer, (keras.layers.BatchNormalization, keras.layers.GroupNormalization))


def _target_class(norm):
    return keras.layers.GroupNormalization if norm == "group" else keras.layers.BatchNormalization


def _replacement(layer, channels, norm):
    """A fresh normalisation layer of kind ``norm`` named like ``layer``."""
    epsilon = float(getattr(layer, "epsilon", 1e-3))
    if norm == "group":
        return FastGroupNormalization(groups=group_count(channels), epsilon=epsilon,
                                      name=layer.name)
    return keras.layers.BatchNormalization(epsilon=epsilon, name=layer.name)


def apply_norm(model, norm, backbone_name="backbone"):
    """Return ``model`` with every normalisation layer of kind ``norm`` (see module docstring).

    Args:
        model: the backbone, a functional ``keras.Model`` (input: the image tensor; outputs: the
            C2..C5 dict).
        norm: one of :data:`NORMS`.
        backbone_name: for error messages.

    Returns:
        a functional keras.Model on the same inputs with the same outputs and layer names:
        ``model`` itself when nothing needed swapping, else a rebuilt graph that reuses every
        non-normalisation layer. BatchNormalization layers are trainable exactly under
        ``"batch"``.

    Raises:
        ValueError: unknown ``norm``, or a backbone whose normalisation layers cannot be swapped
            (not a functional graph, e.g. a subclassed model).
    """
    if norm not in NORMS:
        raise ValueError(f"unknown normalisation {norm!r}; use one of {NORMS}.")
    target = _target_class(norm)
    layers = list(model.layers)
    to_swap = [layer for layer in layers if _is_norm(layer) and not isinstance(layer, target)]
    if to_swap:
        model = _swap(model, norm, backbone_name, type(to_swap[0]).__name__)
    elif not any(_is_norm(layer) for layer in layers):
        log.info("backbone %s has no normalisation layers; BACKBONE_NORM=%r changes nothing",
                 backbone_name, norm)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = norm == "batch"
    return model


def _swap(model, norm, backbone_name, found):
    target = _target_class(norm)

    def call_function(layer, *args, **kwargs):
        if _is_norm(layer) and not isinstance(layer, target):
            inputs = args[0]
            return _replacement(layer, inputs.shape[-1], norm)(inputs)
        return layer(*args, **kwargs)

    try:
        return keras.models.clone_model(model, input_tensors=model.inputs,
                                        clone_function=lambda layer: layer,
                                        call_function=call_function)
    except (ValueError, TypeError, AttributeError) as err:
        raise ValueError(
            f"backbone {backbone_name!r} cannot use normalisation {norm!r}: its "
            f"{type(model).__name__} model is not a functional graph whose {found} layers can "
            f"be replaced ({err}). Build it with the Keras functional API, or choose the "
            "normalisation it was written with.") from err
