"""The per-batch function of a bulk job: ``{key, uri}`` rows in, result rows out.

Engine-free (no Ray here): ``read_rows`` adds each file's bytes, ``BatchSegmenter`` (the
model loaded once, in ``__init__``) turns them into one result row per input -- a mask and
the classes found, or an error code and message.  Bad data never raises: a file that cannot
be read, is not an image, is corrupt, truncated or too large becomes an ``error`` row.  A
batch that fails as a whole (the runtime raised) is run again image by image, so only the
culprit is marked.  ``engines`` schedule these on a local loop or a Ray actor pool.

Crash quarantine: before a batch runs, the worker leaves a claim naming its keys (see
``store.Store.claim``).  A claim still there when the same batch comes back means a worker
died on it (Ray retries a task whose actor died): the batch then runs image by image, each
under its own claim, and an image whose own claim survived a death is marked
``worker_crashed`` instead of being run a third time.
"""

import concurrent.futures
import dataclasses
import functools
import os
import re
import time
from collections.abc import Sequence
from typing import Any, Protocol

from model.inference import augmented, encoding, imaging, pipeline
from model.inference.options import InferenceOptions, parse_classes, parse_tiling

__all__ = ["ERROR_CODES", "BatchSegmenter", "Claims", "ModelSpec", "inference_options",
           "read_rows"]

#: Every error code a row can carry, and what it means.
ERROR_CODES = {
    "unreadable": "the file could not be read (missing, no permission, I/O error)",
    "file_too_large": "the file is larger than max_bytes (not read)",
    "unsupported_image": "not PNG, JPEG, WebP, GIF, BMP or TIFF (an empty file included)",
    "corrupt_image": "a supported format, but corrupt or truncated",
    "image_too_large": "width x height over max_pixels, from the header",
    "work_too_large": "tiling / scales / flip would need too many model inputs",
    "inference_failed": "the runtime raised on this image alone",
    "worker_crashed": "a worker process died on this image (twice)",
}

_READ_THREADS = 8  # object stores answer slowly but in parallel

#: Pillow names the buffer it read (``<_io.BytesIO object at 0x7f...>``): an address that
#: differs from run to run and engine to engine, so rows drop it.
_OBJECT_ADDRESS = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to load and run the model (picklable: it travels to actors)."""

    model: str  # an exported model directory, visible to every worker
    runtime: str = "auto"
    threads: int | None = None
    inference_precision: str = "auto"  # model.inference.precision
    tiling: str = "off"
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    classes: tuple[str, ...] | None = None  # labels or ids; checked against the model's
    batch_size: int = 8  # model inputs per call on the tiling / scales / flip path
    max_pixels: int = 40_000_000
    fingerprint: str = ""
    # Tests only, as the server's ATROUS_TEST_FAULT: "raise@KEY" makes every model call
    # whose images include KEY raise; "exit@KEY" ends the worker process there, as a
    # segfault or the OOM killer would.
    test_fault: str | None = None


def inference_options(spec: ModelSpec, labels: Sequence[str]) -> InferenceOptions:
    """The options ``spec`` asks for, checked against the model's labels.

    Raises:
        ValueError: a bad tiling, scale or class (the driver checks before any worker).
    """
    return InferenceOptions(
        tiling=parse_tiling(spec.tiling), scales=spec.scales, flip=spec.flip,
        classes=parse_classes(list(spec.classes), list(labels)) if spec.classes else None)


def read_rows(rows: Sequence[dict[str, Any]], *, max_bytes: int) -> list[dict[str, Any]]:
    """``{key, uri}`` rows -> the same with ``bytes`` (or ``error_code`` / ``error``)."""
    return list(_readers().map(lambda row: _read(row, max_bytes), rows))


@functools.cache
def _readers() -> concurrent.futures.ThreadPoolExecutor:
    """The process's reading threads, made once (a batch is a few images, a job thousands
    of batches)."""
    return concurrent.futures.ThreadPoolExecutor(_READ_THREADS,
                                                 thread_name_prefix="atrous-read")


def _read(row: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    import fsspec

    out = {"key": row["key"], "uri": row["uri"], "bytes": None}
    try:
        fs, path = fsspec.core.url_to_fs(row["uri"])
        size = fs.size(path)
        if size is not None and size > max_bytes:
            return {**out, "error_code": "file_too_large",
                    "error": f"the file is {size} bytes; the limit is {max_bytes}"}
        return {**out, "bytes": fs.cat_file(path)}
    except (OSError, ValueError) as e:  # missing, a directory, no permission, I/O
        return {**out, "error_code": "unreadable", "error": f"{type(e).__name__}: {_message(e)}"}


class Claims(Protocol):
    """Where a worker notes what it is about to run (see the module docstring)."""

    def claim(self, keys: Sequence[str], *, alone: bool = False) -> bool:
        """Leaves a claim on ``keys`` (``alone``: one image run by itself, apart from a batch
        of one); True if one from an earlier attempt was there."""
        ...

    def release(self, keys: Sequence[str], *, alone: bool = False) -> None: ...


class BatchSegmenter:
    """The model, loaded once; called with read rows, returns one result row each."""

    def __init__(self, spec: ModelSpec, claims: Claims | None = None) -> None:
        from model.inference.runtimes import load_runtime

        self.spec = spec
        self.claims = claims
        self.segmenter = load_runtime(spec.model, spec.runtime, threads=spec.threads,
                                      inference_precision=spec.inference_precision)
        self.runtime = self.segmenter.runtime
        self.labels = self.segmenter.metadata.labels
        self.options = inference_options(spec, self.labels)

    def __call__(self, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        decoded: list[tuple[int, Any, float]] = []
        results: list[dict[str, Any] | None] = [None] * len(rows)
        for index, row in enumerate(rows):
            start = time.perf_counter()
            if row.get("bytes") is None:
                results[index] = self._error(row, row.get("error_code") or "unreadable",
                                             row.get("error") or "no bytes", 0.0)
                continue
            try:
                image = imaging.load_image(row["bytes"], max_pixels=self.spec.max_pixels)
                if not self.options.single_pass:  # over the work budget: before any model call
                    augmented.plan_for(image.size, self.segmenter.metadata.input_size,
                                       self.options)
            except imaging.ImageError as e:
                results[index] = self._error(row, _image_error_code(e), _message(e),
                                             _ms(start))
                continue
            decoded.append((index, image, _ms(start)))
        keys = [rows[i]["key"] for i, _, _ in decoded]
        if decoded:
            if self.claims is not None and self.claims.claim(keys):
                masks = self._one_by_one(rows, decoded)  # a worker died on this batch
            else:
                masks = self._segment(rows, decoded)
            if self.claims is not None:
                self.claims.release(keys)
            for (index, _, decode_ms), (mask, run_ms) in zip(decoded, masks, strict=True):
                start = time.perf_counter()
                if isinstance(mask, _Failure):
                    results[index] = self._error(rows[index], mask.code, mask.message,
                                                 decode_ms + run_ms)
                else:
                    results[index] = self._ok(rows[index], mask, decode_ms + run_ms, start)
        return [r for r in results if r is not None]

    def _segment(self, rows: Sequence[dict[str, Any]],
                 decoded: list[tuple[int, Any, float]]) -> list[tuple[Any, float]]:
        start = time.perf_counter()
        try:
            masks = self._masks([rows[i]["key"] for i, _, _ in decoded],
                                [image for _, image, _ in decoded])
        except Exception:  # noqa: BLE001 - the batch as a whole: find the culprit alone
            return self._one_by_one(rows, decoded, claim=False)
        share = _ms(start) / len(decoded)
        return [(mask, share) for mask in masks]

    def _one_by_one(self, rows: Sequence[dict[str, Any]], decoded: list[tuple[int, Any, float]],
                    claim: bool = True) -> list[tuple[Any, float]]:
        out: list[tuple[Any, float]] = []
        for index, image, _ in decoded:
            key = [rows[index]["key"]]
            start = time.perf_counter()
            if claim and self.claims is not None and self.claims.claim(key, alone=True):
                out.append((_Failure("worker_crashed",
                                     "a worker died twice while segmenting this image"), 0.0))
                self.claims.release(key, alone=True)
                continue
            try:
                (mask,) = self._masks(key, [image])
                out.append((mask, _ms(start)))
            except Exception as e:  # noqa: BLE001 - a runtime error on this image only
                out.append((_Failure("inference_failed", f"{type(e).__name__}: {_message(e)}"),
                            _ms(start)))
            if claim and self.claims is not None:
                self.claims.release(key, alone=True)
        return out

    def _masks(self, keys: Sequence[str], images: Sequence[Any]) -> list[Any]:
        if self.spec.test_fault:
            _inject(self.spec.test_fault, keys)
        return pipeline.segment_masks(self.segmenter, list(images), self.options,
                                      batch_size=self.spec.batch_size)

    def _ok(self, row: dict[str, Any], mask: Any, ms: float, start: float) -> dict[str, Any]:
        height, width = mask.shape
        return {"key": row["key"], "uri": row["uri"], "status": "ok", "error_code": None,
                "error": None, "width": width, "height": height,
                "mask": encoding.mask_png(mask),  # the bytes `atrous segment` writes
                "mask_path": None,
                "classes": encoding.classes_present(mask, self.labels),
                "model": self.spec.fingerprint, "runtime": self.runtime,
                "ms": round(ms + _ms(start), 3)}

    def _error(self, row: dict[str, Any], code: str, message: str,
               ms: float) -> dict[str, Any]:
        return error_row(row, code, message, model=self.spec.fingerprint,
                         runtime=self.runtime, ms=ms)


def error_row(row: dict[str, Any], code: str, message: str, *, model: str = "",
              runtime: str = "", ms: float = 0.0) -> dict[str, Any]:
    """An ``error`` row for ``row`` (``{key, uri}``)."""
    return {"key": row["key"], "uri": row["uri"], "status": "error", "error_code": code,
            "error": message, "width": None, "height": None, "mask": None, "mask_path": None,
            "classes": [], "model": model, "runtime": runtime, "ms": round(ms, 3)}


@dataclasses.dataclass(frozen=True)
class _Failure:
    code: str
    message: str


def _inject(fault: str, keys: Sequence[str]) -> None:
    """``ModelSpec.test_fault``: misbehaves if ``keys`` include the poisoned one."""
    from app.faults import InjectedFault

    kind, _, key = fault.partition("@")
    if key not in keys:
        return
    if kind == "exit":
        os._exit(70)  # no clean-up, no exception: the process is simply gone
    raise InjectedFault(f"injected fault: a model call with {key} raised")


def _image_error_code(error: imaging.ImageError) -> str:
    if isinstance(error, augmented.WorkTooLargeError):
        return "work_too_large"
    if isinstance(error, imaging.ImageTooLargeError):
        return "image_too_large"
    if isinstance(error, imaging.UnsupportedImageError):
        return "unsupported_image"
    return "corrupt_image"


def _message(error: Exception) -> str:
    """An exception's text for a row: without object addresses, at most 300 characters."""
    return _OBJECT_ADDRESS.sub("", str(error))[:300]


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0
