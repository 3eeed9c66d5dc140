"""Exported model formats: one directory each, the same ``atrous.json`` metadata in each.

Every format is a directory holding the network file(s) and ``assets.extra/atrous.json``
(``ModelMetadata``), so that ``ModelMetadata.read(directory)`` works whatever the format::

    savedmodel/  saved_model.pb, variables/        (TensorFlow; the export of record)
    openvino/    model.xml, model.bin              (OpenVINO IR)
    onnx/        model.onnx                        (ONNX, opset 17)

All three keep the serving signature: uint8 ``images`` [N, S, S, 3] and int32 ``sizes``
[N, 2] in, uint8 ``labels`` [N, S, S] out.  No TensorFlow is needed to read this module.
"""

import os
from pathlib import Path

SAVEDMODEL = "savedmodel"
OPENVINO = "openvino"
ONNX = "onnx"
FORMATS = (SAVEDMODEL, OPENVINO, ONNX)

#: The file that marks a directory as holding each format.
MODEL_FILES = {SAVEDMODEL: "saved_model.pb", OPENVINO: "model.xml", ONNX: "model.onnx"}


def detect_format(path: str | Path) -> str:
    """The format of the model directory ``path``; ``ValueError`` naming what is missing."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path} is not a model directory (written by `atrous export`)")
    for name, marker in MODEL_FILES.items():
        if (path / marker).is_file():
            return name
    raise ValueError(f"{path} holds no exported model: expected one of "
                     f"{', '.join(MODEL_FILES.values())}")


def require_format(path: str | Path, wanted: str, runtime: str, advice: str) -> None:
    """``ValueError`` unless ``path`` holds a ``wanted`` export, the only one ``runtime``
    loads; ``advice`` says what to do instead."""
    found = detect_format(path)
    if found != wanted:
        raise ValueError(f"the {runtime} runtime loads {wanted} exports, and {path} is a "
                         f"{found} export: {advice}")


def model_file(path: str | Path, format: str) -> Path:
    """The network file of a model directory of ``format`` (the directory itself for SavedModel)."""
    path = Path(path)
    return path if format == SAVEDMODEL else path / MODEL_FILES[format]


def fingerprint(path: str | os.PathLike[str]) -> str:
    """sha256 of a model directory (every file's relative path and bytes), 16 hex digits:
    two servers, versions or bulk-job rows with the same fingerprint ran the same model."""
    import hashlib

    digest = hashlib.sha256()
    root = Path(path)
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        with file.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]
