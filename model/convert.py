"""SavedModel -> OpenVINO IR or ONNX, optionally post-training-quantized to INT8.

The conversions keep the serving signature (uint8 ``images`` and int32 ``sizes`` in,
uint8 ``labels`` out) and copy ``atrous.json`` with ``format`` (and ``precision="int8"``
after quantization) updated; see ``model.inference.formats`` for the directory layouts.

* OpenVINO: ``openvino.convert_model`` reads the SavedModel; ``--int8`` runs NNCF's
  post-training quantization (``nncf.quantize``) on calibration images.
* ONNX: tf2onnx (opset 17); ``--int8`` runs ONNX Runtime's static QDQ quantization
  (per-channel int8 weights, uint8 activations, convolutions only).

Both INT8 paths were measured (benchmarks/RESULTS.md, "Runtimes"); the docs
(docs/runtimes.md) say which is faster where.  Outputs are written atomically.
"""

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from model import atomic
from model.inference import formats, imaging, preprocessing
from model.inference.contract import INPUT_IMAGES, INPUT_SIZES, SIGNATURE_NAME, ModelMetadata

log = logging.getLogger(__name__)

ONNX_OPSET = 17
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
DEFAULT_CALIBRATION_SIZE = 32


class ConversionError(ValueError):
    """A conversion or quantization step failed; the message says which and why."""


def require(*packages: str) -> None:
    """``ConversionError`` naming the pip extra when a converter package is missing."""
    import importlib.util

    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        raise ConversionError(f"exporting this format needs {', '.join(missing)}: "
                              "pip install 'atrous[convert]'")


def calibration_files(directory: str | Path, limit: int = DEFAULT_CALIBRATION_SIZE) -> list[Path]:
    """Up to ``limit`` images from ``directory``, spread evenly over it.

    A PASCAL VOC directory (``JPEGImages/`` and ``ImageSets/Segmentation/train.txt``) gives
    its training images, so that calibration never sees the validation split; any other
    directory gives its image files (by suffix, sorted, not recursive).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ConversionError(f"calibration directory {directory} does not exist")
    jpegs = directory / "JPEGImages"
    split = directory / "ImageSets" / "Segmentation" / "train.txt"
    if jpegs.is_dir():
        if split.is_file():
            files = [jpegs / f"{line.strip()}.jpg" for line in split.read_text().split()
                     if line.strip()]
        else:
            files = sorted(jpegs.glob("*.jpg"))
    else:
        files = sorted(p for p in directory.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConversionError(f"no calibration images in {directory} "
                              f"(expected {', '.join(IMAGE_SUFFIXES)} files or a VOC directory)")
    if len(files) > limit:
        step = len(files) / limit
        files = [files[int(i * step)] for i in range(limit)]
    return files


def calibration_batches(files: list[Path], input_size: int) -> Iterator[dict[str, np.ndarray]]:
    """The model inputs for each calibration image, letterboxed exactly as served (batch 1)."""
    for path in files:
        try:
            image = imaging.load_image(path.read_bytes(), max_pixels=100_000_000)
        except (OSError, imaging.ImageError) as e:
            raise ConversionError(f"calibration image {path}: {e}") from None
        canvas, valid = preprocessing.letterbox(image, input_size)
        yield {INPUT_IMAGES: canvas[None], INPUT_SIZES: np.array([valid], np.int32)}


def convert_model(source: str | Path, out_dir: str | Path, format: str, *,
                  int8: bool = False, calibration: str | Path | None = None,
                  calibration_size: int = DEFAULT_CALIBRATION_SIZE,
                  overwrite: bool = False) -> ModelMetadata:
    """Writes ``source`` as ``format`` (``openvino`` or ``onnx``) into ``out_dir``.

    Args:
        source: an atrous SavedModel, or (with ``int8``) an fp32 export of ``format`` to
            quantize without converting it again.
        out_dir: the directory to create (atomically).
        format: ``openvino`` or ``onnx``.
        int8: post-training quantization on ``calibration`` images.
        calibration: a folder of images, or a PASCAL VOC directory (its train split).
        calibration_size: how many calibration images to use.
        overwrite: replace an existing ``out_dir``.

    Returns:
        the metadata written beside the converted model.
    """
    source, out_dir = Path(source), Path(out_dir)
    if format not in (formats.OPENVINO, formats.ONNX):
        raise ValueError(f"format must be openvino or onnx, got {format!r}")
    source_format = formats.detect_format(source)
    if source_format != formats.SAVEDMODEL and not (int8 and source_format == format):
        raise ValueError(f"{source} is a {source_format} export: convert a SavedModel "
                         f"(or quantize an fp32 {format} export with --int8)")
    metadata = ModelMetadata.read(source)
    if metadata.precision != "fp32":
        raise ValueError(f"convert an fp32 model, not {metadata.precision}: the runtimes "
                         "choose their own compute precision")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite=True (--overwrite) to replace it")
    files: list[Path] = []
    if int8:
        if calibration is None:
            raise ValueError("--int8 needs calibration images (--calibration DIR)")
        files = calibration_files(calibration, calibration_size)
    elif calibration is not None:
        raise ValueError("--calibration is only used with --int8")
    converter = ["tf2onnx"] if source_format == formats.SAVEDMODEL else []
    if format == formats.OPENVINO:
        require("openvino", *(["nncf"] if int8 else []))
    else:
        require(*converter, "onnx", *(["onnxruntime"] if int8 else []))
    with atomic.staging_directory(out_dir, overwrite=overwrite) as staging:
        if format == formats.OPENVINO:
            _to_openvino(source, staging, files, metadata.input_size)
        else:
            _to_onnx(source, staging, files, metadata.input_size)
        converted = dataclasses.replace(metadata, format=format,
                                        precision="int8" if int8 else metadata.precision)
        converted.write(staging)
    log.info("wrote %s (%s%s) from %s", out_dir, format, ", int8" if int8 else "", source)
    return converted


def _to_openvino(source: Path, out: Path, calibration: list[Path], input_size: int) -> None:
    import openvino as ov

    from model.inference.runtimes.openvino import no_telemetry

    no_telemetry()

    if formats.detect_format(source) == formats.OPENVINO:
        model = ov.Core().read_model(str(formats.model_file(source, formats.OPENVINO)))
    else:
        model = ov.convert_model(str(source))
    if calibration:
        import nncf

        items = list(calibration_batches(calibration, input_size))
        model = nncf.quantize(model, nncf.Dataset(items), subset_size=len(items),
                              preset=nncf.QuantizationPreset.PERFORMANCE)
    # fp32 weights: fp16 compression would change labels for no speed gain on CPU.
    ov.save_model(model, str(out / formats.MODEL_FILES[formats.OPENVINO]),
                  compress_to_fp16=False)


def _to_onnx(source: Path, out: Path, calibration: list[Path], input_size: int) -> None:
    target = out / formats.MODEL_FILES[formats.ONNX]
    if formats.detect_format(source) == formats.ONNX:  # quantize an fp32 ONNX export
        _quantize_onnx(formats.model_file(source, formats.ONNX), target, calibration,
                       input_size)
        return
    fp32 = target if not calibration else out / "fp32.onnx"
    _tf2onnx(source, fp32)
    if calibration:
        _quantize_onnx(fp32, target, calibration, input_size)
        fp32.unlink()


def _tf2onnx(saved_model: Path, out: Path) -> None:
    """The SavedModel's serving signature as ONNX, through tf2onnx's public Python API.

    tf2onnx 1.17 has no public ``from_saved_model`` (only its command line reads SavedModels,
    and a child process would import TensorFlow again); ``from_function`` converts the
    loaded signature wrapped in a ``tf.function`` of the same inputs, and names the ONNX
    inputs and outputs after the signature's (``images``, ``sizes`` -> ``labels``).
    """
    import tensorflow as tf
    from tf2onnx import convert

    logging.getLogger("tf2onnx").setLevel(logging.WARNING)  # a line per folded node
    try:
        loaded = tf.saved_model.load(str(saved_model))  # owns the variables: keep it alive
        signature = loaded.signatures[SIGNATURE_NAME]
        _, specs = signature.structured_input_signature
        inputs = [specs[INPUT_IMAGES], specs[INPUT_SIZES]]

        @tf.function(input_signature=inputs)
        def serve(images: Any, sizes: Any) -> Any:
            return signature(**{INPUT_IMAGES: images, INPUT_SIZES: sizes})

        with tf.device("/cpu:0"):
            convert.from_function(serve, input_signature=inputs, opset=ONNX_OPSET,
                                  output_path=str(out))
    except Exception as e:  # tf2onnx raises anything from its many handlers
        raise ConversionError(f"tf2onnx failed on {saved_model}: {e}") from e


def _quantize_onnx(fp32: Path, out: Path, calibration: list[Path], input_size: int) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._items = calibration_batches(calibration, input_size)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._items, None)

    prepared = out.with_name("prepared.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    # Convolutions only (the rest is resize and argmax); per-channel int8 weights with
    # reduce_range, which AVX2 without VNNI needs to avoid u8 x s8 saturation.
    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=True, reduce_range=True, op_types_to_quantize=["Conv"])
    prepared.unlink()
