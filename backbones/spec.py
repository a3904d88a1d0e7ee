"""What a backbone declares: its C2-C5 taps, strides, channels, stage regexes and, for the
``*_gn`` names, the normalisation it always uses."""

import dataclasses
from typing import Callable, Dict, Optional, Tuple


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone.

    Attributes:
        name: registry key, lowercase (``resnet50``).
        builder: ``builder(input_tensor, *, train_bn, weights) -> keras.Model`` whose outputs
            are a dict ``{"C2", "C3", "C4", "C5"}`` built on ``input_tensor`` (no nesting).
        taps: layer name producing each of C2..C5.
        strides: output stride of C2..C5 (normally 4, 8, 16, 32).
        channels: channels of C2..C5, for documentation and tests.
        stage_regex: regexes selecting the backbone layers of ``3+``, ``4+`` and ``5+``.
            Empty for ad-hoc callables.
        input_scale: factor applied to the mean-subtracted image before the first layer, to
            match the value range the pretrained weights expect.
        norm: the normalisation this name always uses (``"group"`` for ``resnet18_gn``, kept
            so that runs saved under those names load unchanged), or None: the caller chooses.
        residual_norms: regex (full match) of the normalisation layers that end a residual
            branch, i.e. whose output is added to a shortcut; their scale (gamma) starts at
            zero under ``zero_init_residual``. None: the backbone has none or declares none.
        zero_init_residual: whether ``zero_init_residual=None`` (the default) zeroes those
            scales when training from scratch: the backbone's measured recommendation.
    """

    name: str
    builder: Callable
    taps: Dict[str, str]
    strides: Tuple[int, int, int, int] = (4, 8, 16, 32)
    channels: Optional[Tuple[int, int, int, int]] = None
    stage_regex: Dict[str, str] = dataclasses.field(default_factory=dict)
    input_scale: float = 1.0
    norm: Optional[str] = None
    residual_norms: Optional[str] = None
    zero_init_residual: bool = False

    def stage_layers_regex(self, stage):
        """The regex of the backbone layers trained from ``stage`` ("3+", "4+", "5+") on.

        Raises:
            ValueError: the backbone declares no regex for that stage.
        """
        if stage not in self.stage_regex:
            raise ValueError(
                f"backbone {self.name!r} declares no regex for layers={stage!r}; it knows "
                f"{sorted(self.stage_regex) or 'none'}. Use 'heads', 'all' or pass your own "
                "regex.")
        return self.stage_regex[stage]
