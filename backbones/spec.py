"""What a backbone declares: its C2-C5 taps, strides, channels and stage regexes."""

import dataclasses
from typing import Callable, Dict, Optional, Tuple

# Layers that belong to the detector rather than the backbone (Matterport's names).
HEADS_REGEX = r"(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)"


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
        stage_regex: regexes selecting the backbone layers of ``3+``, ``4+`` and ``5+``
            (the heads regex is added by the trainer). Empty for ad-hoc callables.
        input_scale: factor applied to the mean-subtracted image before the first layer, to
            match the value range the pretrained weights expect.
    """

    name: str
    builder: Callable
    taps: Dict[str, str]
    strides: Tuple[int, int, int, int] = (4, 8, 16, 32)
    channels: Optional[Tuple[int, int, int, int]] = None
    stage_regex: Dict[str, str] = dataclasses.field(default_factory=dict)
    input_scale: float = 1.0

    def layers_regex(self, layers):
        """Resolve ``heads``/``3+``/``4+``/``5+``/``all`` (or pass a regex through)."""
        if layers == "all":
            return ".*"
        if layers == "heads":
            return HEADS_REGEX
        if layers in ("3+", "4+", "5+"):
            if layers not in self.stage_regex:
                raise ValueError(
                    f"backbone {self.name!r} declares no regex for layers={layers!r}; "
                    f"it knows {sorted(self.stage_regex) or 'none'}. Use 'heads', 'all' or "
                    "pass your own regex.")
            return f"({self.stage_regex[layers]})|{HEADS_REGEX}"
        return layers
