"""The backbone registry: register_backbone / build_backbone / list_backbones."""

import keras

from backbones.spec import BackboneSpec

_REGISTRY = {}


def register_backbone(name, *, taps, strides=(4, 8, 16, 32), channels=None, stage_regex=None,
                      input_scale=1.0):
    """Decorator registering ``builder(input_tensor, *, train_bn, weights) -> keras.Model``.

    Example::

        @register_backbone("tiny", taps={"C2": "c2", "C3": "c3", "C4": "c4", "C5": "c5"},
                           stage_regex={"3+": "c[345]", "4+": "c[45]", "5+": "c5"})
        def tiny(input_tensor, *, train_bn, weights):
            ...
            return keras.Model(input_tensor, {"C2": c2, "C3": c3, "C4": c4, "C5": c5})

    Raises:
        ValueError: the name is taken, or the taps are not exactly C2..C5.
    """
    key = name.lower()
    if key in _REGISTRY:
        raise ValueError(f"backbone {key!r} is already registered; pick another name or call "
                         "unregister_backbone first.")
    if sorted(taps) != ["C2", "C3", "C4", "C5"]:
        raise ValueError(f"backbone {key!r}: taps must name C2, C3, C4 and C5, got {sorted(taps)}")

    def decorator(builder):
        _REGISTRY[key] = BackboneSpec(key, builder, dict(taps), tuple(strides),
                                      tuple(channels) if channels else None,
                                      dict(stage_regex or {}), float(input_scale))
        return builder
    return decorator


def unregister_backbone(name):
    """Remove a registered backbone (mainly for tests)."""
    _REGISTRY.pop(name.lower(), None)


def list_backbones():
    """Sorted names of every registered backbone."""
    return sorted(_REGISTRY)


def get_backbone_spec(name_or_callable):
    """The spec of a registered name, or an ad-hoc spec wrapping a callable.

    Raises:
        ValueError: unknown name; the message lists the registered names.
    """
    if callable(name_or_callable):
        fn = name_or_callable
        return BackboneSpec(getattr(fn, "__name__", "custom"), fn,
                            {c: c for c in ("C2", "C3", "C4", "C5")})
    key = str(name_or_callable).lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown backbone {name_or_callable!r}; registered backbones: "
                         f"{', '.join(list_backbones())}. Register your own with "
                         "backbones.register_backbone.")
    return _REGISTRY[key]


def build_backbone(name_or_callable, input_tensor, *, train_bn=False, weights=None):
    """Build a backbone on ``input_tensor``.

    Args:
        name_or_callable: registry key or builder callable.
        input_tensor: Keras tensor [B, H, W, C], the mean-subtracted image.
        train_bn: False freezes every BatchNormalization layer (inference statistics).
        weights: None, "imagenet" (downloaded through keras.applications' own path), or a
            local HDF5 path loaded by layer name.

    Returns:
        (spec, keras.Model) with outputs {"C2": [B, H/4, W/4, c2], ..., "C5": [B, H/32, ...]}.
    """
    spec = get_backbone_spec(name_or_callable)
    x = input_tensor
    if spec.input_scale != 1.0:
        x = keras.layers.Rescaling(spec.input_scale, name="backbone_input_scale")(x)
    model = spec.builder(x, train_bn=train_bn, weights=weights)
    if not isinstance(model.output, dict) or sorted(model.output) != ["C2", "C3", "C4", "C5"]:
        raise ValueError(f"backbone {spec.name!r} must return a keras.Model whose outputs are a "
                         "dict with keys C2, C3, C4, C5.")
    freeze_batchnorm(model, train_bn)
    return spec, model


def freeze_batchnorm(model, train_bn):
    """Keras 3 BatchNormalization with trainable=False runs in inference mode."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = bool(train_bn)


def model_from_taps(app, taps, name):
    """Cut a keras.applications model at its tap layers -> dict-output keras.Model."""
    outputs = {c: app.get_layer(layer).output for c, layer in taps.items()}
    return keras.Model(app.inputs, outputs, name=name)
