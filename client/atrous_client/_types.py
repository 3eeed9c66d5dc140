"""Typed results: what ``segment`` and ``model_info`` return."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeAlias, TypedDict

import numpy as np
from PIL import Image

from ._images import ImageInput, blend, mask_to_image, open_input

Format: TypeAlias = Literal["png", "json", "probabilities"]
"""How ``segment`` asks for the mask: ``png`` (default, smallest response; per-class
statistics computed here), ``json`` (statistics and mean confidences computed by the
server) or ``probabilities`` (per-class probability planes as well, see
``Segmentation.probabilities``)."""

Tiling: TypeAlias = Literal["off", "auto", "on"]
"""``off`` (default): DeepLab's single pass, the image shrunk to the model's input size;
``on``: overlapping tiles at native resolution (thin structures survive); ``auto``: tiles
when the longer side exceeds twice the input size."""


class SegmentOptions(TypedDict, total=False):
    """The keywords of ``segment`` and ``segment_many`` beyond ``image`` and ``format``.

    A new per-call option is added here and in ``_base.segment_options`` (which turns these
    into query parameters), and nowhere else: both clients take ``**options`` of this type.
    """

    tiling: Tiling
    """``off`` (default), ``on`` or ``auto``; see ``Tiling``."""
    scales: Sequence[float] | None
    """Test-time scales whose probabilities are averaged, e.g. DeepLab's
    ``(0.5, 0.75, 1.0, 1.25, 1.5, 1.75)``; None (default) is ``(1.0,)``."""
    flip: bool
    """Also run on the mirrored image and average (default False)."""
    classes: Sequence[str | int] | None
    """Labels or ids to keep; other classes become background (0).  None keeps all."""


@dataclasses.dataclass(frozen=True)
class ClassInfo:
    """One class present in a mask."""

    id: int
    label: str
    pixels: int
    fraction: float
    """``pixels`` over width × height."""
    bbox: tuple[int, int, int, int]
    """``(x_min, y_min, width, height)`` in pixels, as in the HTTP API."""
    confidence: float | None = None
    """Mean probability (0..1) of this class over its pixels; with ``format="json"`` or
    ``"probabilities"`` (None with ``png``)."""


@dataclasses.dataclass(frozen=True)
class ModelClass:
    """One class the served model knows."""

    id: int
    label: str
    color: tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """``GET /v1/model``: what the server runs.  ``raw`` keeps the whole JSON body."""

    backbone: str
    output_stride: int
    input_size: int
    num_classes: int
    classes: tuple[ModelClass, ...]
    head: str | None = None
    weights: str | None = None
    trained: bool | None = None
    precision: str | None = None
    device: str | None = None
    format: str | None = None  # savedmodel, openvino or onnx
    runtime: str | None = None
    runtime_version: str | None = None
    inference_precision: str | None = None  # how it computes here: fp32 or bf16
    inference_precision_reason: str | None = None
    batching: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    raw: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    name: str | None = None  # the model's name in the server's repository
    version: int | None = None
    fingerprint: str | None = None  # a digest of the model's files

    @property
    def labels(self) -> tuple[str, ...]:
        """Label of every class id, ``labels[id]``."""
        by_id = {c.id: c.label for c in self.classes}
        return tuple(by_id.get(i, f"class_{i}") for i in range(self.num_classes))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelInfo:
        classes = tuple(
            ModelClass(id=int(c["id"]), label=str(c["label"]),
                       color=(int(c["color"][0]), int(c["color"][1]), int(c["color"][2])))
            for c in data["classes"]
        )
        return cls(
            backbone=str(data["backbone"]),
            output_stride=int(data["output_stride"]),
            input_size=int(data["input_size"]),
            num_classes=int(data.get("num_classes", len(classes))),
            classes=classes,
            head=data.get("head"),
            weights=data.get("weights"),
            trained=data.get("trained"),
            precision=data.get("precision"),
            device=data.get("device"),
            format=data.get("format"),
            runtime=data.get("runtime"),
            runtime_version=data.get("runtime_version"),
            inference_precision=data.get("inference_precision"),
            inference_precision_reason=data.get("inference_precision_reason"),
            batching=dict(data.get("batching") or {}),
            raw=dict(data),
            name=data.get("name"),
            version=data.get("version"),
            fingerprint=data.get("fingerprint"),
        )


@dataclasses.dataclass(frozen=True)
class ModelVersion:
    """One version of a served model (``list_models``)."""

    version: int
    state: str  # loading, available, unloading or failed
    fingerprint: str | None = None
    reason: str | None = None  # why it failed


@dataclasses.dataclass(frozen=True)
class ModelStatus:
    """A model the server has, and its versions, newest first (``list_models``)."""

    name: str
    default: bool
    versions: tuple[ModelVersion, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelStatus:
        return cls(name=str(data["name"]), default=bool(data["default"]), versions=tuple(
            ModelVersion(version=int(v["version"]), state=str(v["state"]),
                         fingerprint=v.get("fingerprint"), reason=v.get("reason"))
            for v in data["versions"]))


@dataclasses.dataclass(frozen=True, eq=False)
class Segmentation:
    """The result of one ``segment`` call.

    ``mask`` is the numpy view of the result: uint8 [height, width], one class id per input
    pixel (read-only; ``.copy()`` it to edit).  ``classes`` lists the classes present, by id.
    """

    mask: np.ndarray
    labels: tuple[str, ...]
    """Label of every class id the model knows, ``labels[id]``."""
    classes: tuple[ClassInfo, ...]
    request_id: str | None = None
    """The ``X-Request-ID`` the server answered with; quote it when reporting a problem."""
    timings: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """Server-side phases in milliseconds, from ``Server-Timing`` (decode, queue, inference,
    encode; ``tiles`` and ``scales`` report how many model inputs and scales ran)."""
    planes: np.ndarray | None = dataclasses.field(default=None, repr=False)
    """``format="probabilities"`` only: uint8 [K, height, width], ``round(255 p)``."""
    class_ids: tuple[int, ...] = ()
    """The class id of each plane (background first)."""
    model: str | None = None
    """The ``name/version`` that made it (the server's ``X-Atrous-Model``)."""

    def __post_init__(self) -> None:
        # Frozen means frozen: the mask may be shared, so nobody edits it in place by accident.
        self.mask.flags.writeable = False
        if self.planes is not None:
            self.planes.flags.writeable = False

    @property
    def probabilities(self) -> np.ndarray:
        """float32 [height, width, K] class probabilities in [0, 1] (``format="probabilities"``),
        plane ``k`` for class ``class_ids[k]``; with a class filter, plane 0 is "none of the
        requested classes"."""
        if self.planes is None:
            raise ValueError('no probabilities: segment with format="probabilities"')
        return np.moveaxis(self.planes, 0, -1).astype(np.float32) / 255.0

    def probability(self, class_: int | str) -> np.ndarray:
        """float32 [height, width]: one class's probability, by id or label."""
        if self.planes is None:
            raise ValueError('no probabilities: segment with format="probabilities"')
        class_id = self.labels.index(class_) if isinstance(class_, str) else class_
        if class_id not in self.class_ids:
            raise KeyError(f"class {class_!r} was not requested; planes: {self.class_ids}")
        plane: np.ndarray = self.planes[self.class_ids.index(class_id)]
        return plane.astype(np.float32) / 255.0

    @property
    def confidence(self) -> np.ndarray:
        """float32 [height, width]: the probability of each pixel's class in ``mask``."""
        if self.planes is None:
            raise ValueError('no probabilities: segment with format="probabilities"')
        index = np.zeros(256, np.intp)
        index[list(self.class_ids)] = np.arange(len(self.class_ids))
        picked: np.ndarray = np.take_along_axis(self.planes, index[self.mask][None], axis=0)[0]
        return picked.astype(np.float32) / 255.0

    def __repr__(self) -> str:
        present = ", ".join(f"{c.label} {c.fraction:.1%}" for c in self.classes)
        return (f"Segmentation({self.width}×{self.height}, classes=[{present}], "
                f"request_id={self.request_id!r})")

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    @property
    def height(self) -> int:
        return int(self.mask.shape[0])

    def to_image(self) -> Image.Image:
        """The mask as an 8-bit palette image: pixel value = class id, VOC colours."""
        return mask_to_image(self.mask)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes ``to_image()`` as a PNG: the same pixels and palette as the server's mask."""
        self.to_image().save(path, format="PNG", compress_level=1)  # as the server does

    def overlay(self, image: ImageInput, alpha: float = 0.5) -> Image.Image:
        """``image`` blended with the class colours, as an RGB PIL image.

        ``image`` is any input ``segment`` accepts, normally the one that was segmented; paths
        and bytes are EXIF-oriented like on the server.  It must have the mask's size.
        """
        return blend(open_input(image), self.mask, alpha)


def classes_from_mask(mask: np.ndarray, labels: tuple[str, ...],
                      confidence: np.ndarray | None = None) -> tuple[ClassInfo, ...]:
    """Per-class pixel counts, fractions and boxes of a mask, ordered by id (and mean
    ``confidence`` per class when given)."""
    counts = np.bincount(mask.ravel(), minlength=256)
    total = max(mask.size, 1)
    classes = []
    for class_id in np.flatnonzero(counts):
        present = mask == class_id
        rows = np.flatnonzero(present.any(axis=1))
        cols = np.flatnonzero(present.any(axis=0))
        classes.append(ClassInfo(
            id=int(class_id),
            label=label_of(labels, int(class_id)),
            pixels=int(counts[class_id]),
            fraction=float(counts[class_id]) / total,
            bbox=(int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1),
                  int(rows[-1] - rows[0] + 1)),
            confidence=(None if confidence is None
                        else round(float(confidence[present].mean()), 4)),
        ))
    return tuple(classes)


def classes_from_json(items: list[Mapping[str, Any]]) -> tuple[ClassInfo, ...]:
    """The server's ``classes`` array, typed."""
    return tuple(
        ClassInfo(id=int(c["id"]), label=str(c["label"]), pixels=int(c["pixels"]),
                  fraction=float(c["fraction"]),
                  bbox=(int(c["bbox"][0]), int(c["bbox"][1]), int(c["bbox"][2]),
                        int(c["bbox"][3])),
                  confidence=(float(c["confidence"]) if c.get("confidence") is not None
                              else None))
        for c in items
    )


def label_of(labels: tuple[str, ...], class_id: int) -> str:
    return labels[class_id] if class_id < len(labels) else f"class_{class_id}"
