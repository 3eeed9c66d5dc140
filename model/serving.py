"""The serving contract of an exported model: signature names and metadata.

A SavedModel written by ``model.export`` has one signature, ``serving_default``::

    images: uint8 [N, S, S, 3]  RGB, letterboxed: image at the top left, S = input_size
    sizes:  int32 [N, 2]        valid (height, width) of each image inside the S x S canvas
    ->
    labels: uint8 [N, S, S]     class ids (argmax in the graph; only labels leave the device)

and ``assets.extra/atrous.json`` with the ``ModelMetadata`` below.  This module and
``model.runner`` need neither tf-slim nor TensorFlow to read the metadata.
"""

import dataclasses
import json
from pathlib import Path
from typing import Any

SIGNATURE_NAME = "serving_default"
INPUT_IMAGES = "images"
INPUT_SIZES = "sizes"
OUTPUT_LABELS = "labels"
METADATA_PATH = Path("assets.extra") / "atrous.json"
METADATA_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ModelMetadata:
    """What the server and clients need to know about an exported model."""

    backbone: str
    output_stride: int
    num_classes: int
    head: str
    input_size: int
    precision: str
    trained: bool
    weights: str
    labels: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    tensorflow_version: str
    version: int = METADATA_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelMetadata":
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["labels"] = tuple(values["labels"])
        values["colors"] = tuple(tuple(c) for c in values["colors"])
        return cls(**values)

    @classmethod
    def read(cls, saved_model_dir: str | Path) -> "ModelMetadata":
        path = Path(saved_model_dir) / METADATA_PATH
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise ValueError(
                f"{saved_model_dir} is not an atrous SavedModel: {METADATA_PATH} is missing"
            ) from None
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is not valid atrous metadata: {e}") from None

    def write(self, saved_model_dir: str | Path) -> None:
        path = Path(saved_model_dir) / METADATA_PATH
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())
