"""What a caller may ask of one segmentation beyond the default DeepLab single pass.

``InferenceOptions`` is the one validated record the server, ``atrous segment`` and the
SDK fill in: tiling mode, test-time scales, flip, and a class filter.  Every parser here
raises ``ValueError`` with a message that names the bad value, so the server can answer
422 with it as it is.
"""

import dataclasses
import enum
from collections.abc import Sequence

from model.inference.tiling import DEFAULT_TILE_MAX_SIDE, parse_scales

__all__ = ["InferenceOptions", "Tiling", "parse_classes", "parse_flip", "parse_tiling"]


class Tiling(enum.StrEnum):
    """``off``: one letterboxed pass (DeepLab's); ``on``: overlapping native-resolution
    tiles; ``auto``: tiles when the longer side exceeds twice the model's input size."""

    off = "off"
    auto = "auto"
    on = "on"


@dataclasses.dataclass(frozen=True)
class InferenceOptions:
    """How to run the model on one image.

    Attributes:
        tiling: see ``Tiling``.
        scales: resize factors of the passes whose probabilities are averaged.
        flip: also run every scale on the left-right mirrored image.
        classes: class ids to keep (others become background, id 0); None keeps all.
        tile_max_side: tiling downscales the image so its shorter side is at most this.
    """

    tiling: Tiling = Tiling.off
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    classes: tuple[int, ...] | None = None
    tile_max_side: int = DEFAULT_TILE_MAX_SIDE

    def __post_init__(self) -> None:
        object.__setattr__(self, "tiling", parse_tiling(self.tiling))
        object.__setattr__(self, "scales", parse_scales(self.scales))
        if self.tile_max_side < 1:
            raise ValueError(f"tile_max_side must be positive, got {self.tile_max_side}")

    @property
    def single_pass(self) -> bool:
        """True when nothing beyond DeepLab's one letterboxed pass was asked for."""
        return self.tiling is Tiling.off and self.scales == (1.0,) and not self.flip

    def tiles(self, width: int, height: int, input_size: int) -> bool:
        """Whether an image of this size is tiled."""
        if self.tiling is Tiling.auto:
            return max(width, height) > 2 * input_size
        return self.tiling is Tiling.on


def parse_tiling(value: str | Tiling) -> Tiling:
    try:
        return Tiling(value)
    except ValueError:
        raise ValueError(f"tiling must be off, auto or on, got {value!r}") from None


def parse_flip(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    text = value.strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"flip must be true or false, got {value!r}")


def parse_classes(value: str | Sequence[str | int], labels: Sequence[str]) -> tuple[int, ...]:
    """``"person,dog"`` or ``"15,12"`` (or a list of either) -> sorted unique class ids.

    Raises:
        ValueError: an empty list, or an unknown label or id, named in the message.
    """
    parts = [p.strip() for p in value.split(",")] if isinstance(value, str) else list(value)
    if not parts or parts == [""]:
        raise ValueError("classes must name at least one class, e.g. person,dog or 15,12")
    by_label = {label: index for index, label in enumerate(labels)}
    ids: set[int] = set()
    for part in parts:
        text = str(part).strip()
        if text in by_label:
            ids.add(by_label[text])
        elif text.isdigit() and int(text) < len(labels):
            ids.add(int(text))
        else:
            raise ValueError(f"unknown class {text!r}: use a label ({', '.join(labels[:4])}, "
                             f"...; GET /v1/model lists them) or an id below {len(labels)}")
    return tuple(sorted(ids))
