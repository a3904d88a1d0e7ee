"""The backbone registry: register_backbone / build_backbone / list_backbones."""

import logging
import re

import keras

from backbones.normalization import NORMS, apply_norm
from backbones.spec import BackboneSpec
from backbones.weights_io import load_weights_by_name

log = logging.getLogger(__name__)

_REGISTRY = {}


def register_backbone(name, *, taps, strides=(4, 8, 16, 32), channels=None, stage_regex=None,
                      input_scale=1.0, norm=None, residual_norms=None,
                      zero_init_residual=False):
    """Decorator registering ``builder(input_tensor, *, train_bn, weights) -> keras.Model``.

    ``weights`` is None or "imagenet" (a builder without ImageNet weights raises); local
    weight files are loaded by :func:`build_backbone`. The builder may use any normalisation
    layers (BatchNorm usually); :func:`build_backbone` swaps them for the caller's choice.
    ``norm`` fixes that choice for this name (the ``resnet18_gn`` style); leave it None.
    ``residual_norms`` is a regex of the normalisation layers ending each residual branch
    (``bn\\d[a-z]+_branch2c`` for a bottleneck ResNet), for ``zero_init_residual``;
    ``zero_init_residual=True`` makes zeroing them this backbone's from-scratch default.

    Example::

        @register_backbone("tiny", taps={"C2": "c2", "C3": "c3", "C4": "c4", "C5": "c5"},
                           stage_regex={"3+": "c[345]", "4+": "c[45]", "5+": "c5"})
        def tiny(input_tensor, *, train_bn, weights):
            ...
            return keras.Model(input_tensor, {"C2": c2, "C3": c3, "C4": c4, "C5": c5})

    Raises:
        ValueError: the name is taken, the taps are not exactly C2..C5, or an unknown norm.
    """
    key = name.lower()
    if key in _REGISTRY:
        raise ValueError(f"backbone {key!r} is already registered; pick another name or call "
                         "unregister_backbone first.")
    if sorted(taps) != ["C2", "C3", "C4", "C5"]:
        raise ValueError(f"backbone {key!r}: taps must name C2, C3, C4 and C5, got {sorted(taps)}")
    if norm is not None and norm not in NORMS:
        raise ValueError(f"backbone {key!r}: norm must be one of {NORMS} or None, got {norm!r}")
    if zero_init_residual and not residual_norms:
        raise ValueError(f"backbone {key!r}: zero_init_residual needs residual_norms")

    def decorator(builder):
        _REGISTRY[key] = BackboneSpec(key, builder, dict(taps), tuple(strides),
                                      tuple(channels) if channels else None,
                                      dict(stage_regex or {}), float(input_scale), norm,
                                      residual_norms, bool(zero_init_residual))
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


def resolve_norm(spec, norm):
    """The normalisation a backbone is built with: the spec's fixed one (``*_gn`` names), else
    ``norm``.

    Raises:
        ValueError: ``norm`` is unknown, or contradicts the name's fixed normalisation.
    """
    if norm is not None and norm not in NORMS:
        raise ValueError(f"unknown backbone normalisation {norm!r}; use one of {NORMS}.")
    if spec.norm is None:
        return norm or "frozen"
    if norm not in (None, spec.norm):
        base = spec.name[:-3] if spec.name.endswith("_gn") else spec.name
        raise ValueError(f"backbone {spec.name!r} always uses norm {spec.norm!r}, not {norm!r}; "
                         f"for {norm!r} use BACKBONE={base!r} with that norm.")
    return spec.norm


def build_backbone(name_or_callable, input_tensor, *, norm=None, train_bn=False, weights=None,
                   zero_init_residual=None):
    """Build a backbone on ``input_tensor``.

    Args:
        name_or_callable: registry key or builder callable.
        input_tensor: Keras tensor [B, H, W, C], the mean-subtracted image.
        norm: "batch" (trainable BatchNorm), "frozen" (BatchNorm in inference mode) or
            "group" (GroupNorm); None means "batch" if ``train_bn`` else "frozen"
            (Matterport's TRAIN_BN). See :mod:`backbones.normalization`.
        train_bn: Matterport's switch, used only when ``norm`` is None.
        weights: None, "imagenet" (downloaded through keras.applications' own path), or a
            local HDF5 path loaded by layer name (before the normalisation is swapped, so
            the file's own normalisation layers load).
        zero_init_residual: from scratch (``weights`` None), start the scale (gamma) of the
            normalisation ending each residual branch (``spec.residual_norms``) at zero, so
            every residual block starts as the identity (Goyal et al. 2017, "Accurate, Large
            Minibatch SGD", 5.1; torchvision's ``zero_init_residual``). None: the backbone's
            own default (``spec.zero_init_residual``, True for ResNet-50/101), applied only
            under a trainable norm. A backbone that declares no residual norms (DenseNet,
            MobileNet) is built unchanged.

    Returns:
        (spec, keras.Model) with outputs {"C2": [B, H/4, W/4, c2], ..., "C5": [B, H/32, ...]},
        whose layer names do not depend on ``norm``.

    Raises:
        ValueError: unknown backbone or norm, a builder that returns the wrong outputs, a
            backbone whose normalisation cannot be swapped, or ``zero_init_residual`` with the
            untrainable "frozen" norm (a zero scale that never trains would cut the branch).
    """
    spec = get_backbone_spec(name_or_callable)
    if norm is None and spec.norm is None:
        norm = "batch" if train_bn else "frozen"
    norm = resolve_norm(spec, norm)
    x = input_tensor
    if spec.input_scale != 1.0:
        x = keras.layers.Rescaling(spec.input_scale, name="backbone_input_scale")(x)
    local_file = weights not in (None, "imagenet")
    model = spec.builder(x, train_bn=norm == "batch", weights=None if local_file else weights)
    if not isinstance(model.output, dict) or sorted(model.output) != ["C2", "C3", "C4", "C5"]:
        raise ValueError(f"backbone {spec.name!r} must return a keras.Model whose outputs are a "
                         "dict with keys C2, C3, C4, C5.")
    if local_file:
        load_weights_by_name(model, weights)
    model = apply_norm(model, norm, spec.name)
    if zero_init_residual is None:
        zero_init_residual = spec.zero_init_residual and norm != "frozen"
    if zero_init_residual and weights is None:
        if norm == "frozen":
            raise ValueError(f"backbone {spec.name!r}: zero_init_residual needs a trainable "
                             "normalisation ('group' or 'batch'), not 'frozen'.")
        _zero_residual_scales(model, spec)
    return spec, model


def _zero_residual_scales(model, spec):
    """Set gamma to 0 in every normalisation layer of ``model`` named by
    ``spec.residual_norms`` (nothing when none are declared).

    Raises:
        ValueError: the declared regex matches no normalisation layer with a scale.
    """
    if not spec.residual_norms:
        log.info("backbone %s declares no residual norms; zero_init_residual changes nothing",
                 spec.name)
        return
    pattern = re.compile(spec.residual_norms)
    zeroed = 0
    for layer in model.layers:
        if pattern.fullmatch(layer.name) and getattr(layer, "gamma", None) is not None:
            layer.gamma.assign(keras.ops.zeros_like(layer.gamma))
            zeroed += 1
    if not zeroed:
        raise ValueError(f"backbone {spec.name!r}: residual_norms {spec.residual_norms!r} "
                         "matches no normalisation layer with a scale.")


def model_from_taps(app, taps, name):
    """Cut a keras.applications model at its tap layers -> dict-output keras.Model."""
    outputs = {c: app.get_layer(layer).output for c, layer in taps.items()}
    return keras.Model(app.inputs, outputs, name=name)
