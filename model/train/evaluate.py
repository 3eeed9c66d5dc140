"""Evaluation: one confusion matrix, and every metric derived from it.

Single-scale evaluation runs an exported SavedModel through ``segment_images``, the
server's own prepare -> run -> render sequence (DeepLab's 513 letterbox, the mask
resized back to the original size), so a mask ``--save-predictions`` writes is the mask
the server returns for the same image.

Multi-scale (and flipped) evaluation follows DeepLab's ``eval.py``: the letterboxed
canvas is resized by each scale, each logits map is resized back to the canvas and
turned into probabilities, the probabilities of every scale (and of each mirrored
input, mirrored back) are summed, and the argmax is taken.  It needs the checkpoint
(the SavedModel only returns labels), so it builds its own graph around the same
network (``MultiScaleSegmenter``) and then goes through the same letterbox and restore
steps as single-scale evaluation.
"""

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model.atomic import atomic_write_bytes, atomic_write_text
from model.config import ModelConfig
from model.inference import encoding, imaging, labels
from model.inference.contract import ModelMetadata, Segmenter
from model.inference.pipeline import segment_images
from model.inference.precision import InferencePrecision
from model.train.data import IGNORE_LABEL, load_examples

# Evaluation reads trusted local files: allow VOC-sized and much larger images.
_MAX_PIXELS = 1 << 28


class ConfusionMatrix:
    """Counts of (true class, predicted class) pixels, 255 excluded (torchvision's idea).

    Attributes:
        matrix: int64 [num_classes, num_classes], rows = ground truth, columns = prediction.
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes), np.int64)

    def update(self, truth: np.ndarray, prediction: np.ndarray) -> None:
        """Adds one image: uint8 [H, W] labels (255 ignored) and predictions of equal shape."""
        if truth.shape != prediction.shape:
            raise ValueError(f"label {truth.shape} and prediction {prediction.shape} differ")
        keep = truth != IGNORE_LABEL
        t = truth[keep].astype(np.int64)
        p = prediction[keep].astype(np.int64)
        if t.size and (t.max() >= self.num_classes or p.max() >= self.num_classes):
            raise ValueError(f"class id >= num_classes {self.num_classes}")
        self.matrix += np.bincount(t * self.num_classes + p,
                                   minlength=self.num_classes ** 2).reshape(self.matrix.shape)

    def per_class_iou(self) -> np.ndarray:
        """float [num_classes]: TP / (TP + FP + FN); NaN for a class absent from both."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    def miou(self) -> float:
        """Mean IoU over the classes present in the labels or the predictions."""
        iou = self.per_class_iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def to_dict(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        names = list(names or labels.class_labels(self.num_classes))
        iou = self.per_class_iou()
        return {
            "miou": self.miou(),
            "pixel_accuracy": self.pixel_accuracy(),
            "per_class_iou": {name: (None if np.isnan(v) else float(v))
                              for name, v in zip(names, iou, strict=True)},
            "confusion_matrix": self.matrix.tolist(),
        }

    def table(self, names: Sequence[str] | None = None) -> str:
        """A readable per-class table (classes never seen are listed as '-')."""
        names = list(names or labels.class_labels(self.num_classes))
        iou = self.per_class_iou()
        pixels = self.matrix.sum(1)
        width = max(len(n) for n in [*names, "pixel accuracy"])
        lines = [f"{'class':<{width}}  {'IoU':>7}  {'pixels':>10}"]
        for name, value, count in zip(names, iou, pixels, strict=True):
            shown = "-" if np.isnan(value) else f"{value:.4f}"
            lines.append(f"{name:<{width}}  {shown:>7}  {count:>10}")
        lines.append(f"{'mIoU':<{width}}  {self.miou():>7.4f}")
        lines.append(f"{'pixel accuracy':<{width}}  {self.pixel_accuracy():>7.4f}")
        return "\n".join(lines)


@dataclasses.dataclass
class EvalResult:
    confusion: ConfusionMatrix
    images: int
    scales: tuple[float, ...]
    flip: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(self.confusion.to_dict(), images=self.images, scales=list(self.scales),
                    flip=self.flip)

    def write_json(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


def save_mask(mask: np.ndarray, path: Path) -> None:
    """The server's ``format=png`` body, byte for byte (palette PNG, pixel = class id)."""
    atomic_write_bytes(path, encoding.mask_png(mask))


def evaluate(segmenter: Segmenter, data_path: str | Path, split: str, num_classes: int, *,
             batch_size: int = 4, save_predictions: str | Path | None = None,
             scales: Sequence[float] = (1.0,), flip: bool = False) -> EvalResult:
    """Segments every image of ``split`` with ``segmenter`` and scores it.

    Args:
        segmenter: a SavedModel runner (single scale) or a ``MultiScaleSegmenter``.
        data_path: VOC directory or TFRecords.
        split: which split.
        num_classes: label range.
        batch_size: images per model call.
        save_predictions: directory for one ``<name>.png`` mask per image.
        scales, flip: recorded in the result (the segmenter does the work).
    """
    examples = load_examples(data_path, split, num_classes)
    confusion = ConfusionMatrix(num_classes)
    out = Path(save_predictions) if save_predictions else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        images = [imaging.load_image(encoded, max_pixels=_MAX_PIXELS) for _, encoded, _ in chunk]
        masks = segment_images(segmenter, images)
        for (name, _, truth), mask in zip(chunk, masks, strict=True):
            confusion.update(truth, mask)
            if out is not None:
                save_mask(mask, out / f"{name}.png")
    return EvalResult(confusion, len(examples), tuple(scales), flip)


def metadata_for(config: ModelConfig, weights: str, trained: bool = True) -> ModelMetadata:
    """Serving metadata for a segmenter built in process (what ``export`` would write)."""
    import tensorflow as tf

    return ModelMetadata(
        backbone=config.backbone, output_stride=config.output_stride,
        num_classes=config.num_classes, head=config.head, input_size=config.input_size,
        precision=config.precision, trained=trained, weights=weights,
        labels=tuple(labels.class_labels(config.num_classes)),
        colors=tuple((int(r), int(g), int(b))
                     for r, g, b in labels.voc_colormap(config.num_classes)),
        tensorflow_version=tf.__version__)


class LiveSegmenter:
    """A ``Segmenter`` over a training module: the serving graph on its live variables.

    Used for the mIoU measured during training; ``model.network.predict_labels`` is the
    function export writes into the SavedModel.
    """

    runtime = "tensorflow"
    device = "CPU"
    oom_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, module: Any, weights: str = "training") -> None:
        import tensorflow as tf

        self.metadata = metadata_for(module.config, weights)
        self.runtime_version = tf.__version__
        self.inference_precision = InferencePrecision(
            self.metadata.precision, "training: the network's own precision")
        self._labels = tf.function(module.labels)

    def __call__(self, images: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        result: np.ndarray = self._labels(images, np.asarray(sizes, np.int32)).numpy()
        return result


class MultiScaleSegmenter:
    """DeepLab's multi-scale + flip inference as a ``Segmenter`` (restored from a checkpoint).

    Args:
        config: the network.
        checkpoint: a RUN directory or any checkpoint ``model.checkpoints`` reads.
        scales: input scales, e.g. (0.5, 0.75, 1.0, 1.25, 1.5, 1.75).
        flip: add the left-right mirrored input at every scale.
    """

    runtime = "tensorflow"
    device = "CPU"
    oom_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, config: ModelConfig, checkpoint: str | Path, scales: Sequence[float],
                 flip: bool) -> None:
        import tensorflow as tf

        self.runtime_version = tf.__version__
        from model.train.module import SegmentationModule
        from model.train.objective import init_from_checkpoint

        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"scales must be positive, got {list(scales)}")
        self.config = config
        self.inference_precision = InferencePrecision(
            config.precision, "checkpoint: the network's own precision")
        self.scales = tuple(scales)
        self.flip = flip
        self.module = SegmentationModule(config)
        self.module.build()
        report = init_from_checkpoint(self.module.named_variables(), str(checkpoint), config)
        self.metadata = metadata_for(config, report.checkpoint, report.trained)
        self._predict = tf.function(self._graph)

    def _graph(self, images: Any, sizes: Any) -> Any:
        import tensorflow as tf

        from model.nets import network

        size = self.config.input_size
        padded = network.pad_with_mean(tf.cast(images, tf.float32), sizes)
        total = 0.0
        for scale in self.scales:
            side = max(1, int(round((size - 1) * scale)) + 1)
            scaled = tf.compat.v1.image.resize_bilinear(padded, [side, side], align_corners=True)
            inputs = [scaled, tf.reverse(scaled, [2])] if self.flip else [scaled]
            for i, x in enumerate(inputs):
                logits = self.module.logits(x, is_training=False)
                logits = tf.compat.v1.image.resize_bilinear(logits, [size, size],
                                                            align_corners=True)
                probabilities = tf.nn.softmax(logits)
                total += tf.reverse(probabilities, [2]) if i else probabilities
        return tf.cast(tf.argmax(total, axis=3), tf.uint8)

    def __call__(self, images: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        result: np.ndarray = self._predict(images, np.asarray(sizes, np.int32)).numpy()
        return result
