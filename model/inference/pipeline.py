"""The one inference sequence: prepare -> run -> render.

The server, ``atrous segment`` and evaluation all go through these functions, so the
same image gives the same mask whichever way it came in (DeepLab's 513 semantics:
``model.inference.preprocessing``).

* ``decode`` / ``prepare``: bytes or a PIL image -> a letterboxed canvas (the server
  decodes before queueing, so a corrupt image fails alone and never joins a batch).
* ``run``: one model call for a list of prepared images.
* ``restore`` / ``render``: the model's labels -> a mask at the image's own size ->
  a response body.

Beyond that single pass (``InferenceOptions``: tiling, scales, flip; and the outputs that
need class probabilities: ``json`` confidences, ``probabilities``, ``confidence``), one
image becomes a group of model inputs (``model.inference.tiling``):

* ``decode_group`` / ``prepare_group``: bytes or a PIL image -> its plan (checked against
  the work budget) and every tile of every (scale, flip) pass;
* ``segment_group``: the tiles through a segmenter's ``probabilities``, a batch at a time,
  each result folded into a ``StreamingResolve`` (``start_group``) as it comes, so memory
  stays proportional to the output (the server hands the tiles to its batcher as one
  group instead, and feeds the resolver as their results arrive);
* ``render_resolved`` / ``render_probabilities``: mask, confidence, planes -> body.

A class filter applies on both paths: other classes become background.

Image errors are ``imaging.ImageError`` subclasses; mapping them to HTTP statuses is
the API layer's business.
"""

import dataclasses
import enum
import json
from collections.abc import Sequence

import numpy as np
from PIL import Image

from model.inference import augmented, encoding, imaging, preprocessing, tiling
from model.inference import probabilities as probability_outputs
from model.inference.contract import ModelMetadata, Segmenter, probabilities_of
from model.inference.options import InferenceOptions


class OutputFormat(enum.StrEnum):
    """What a segmentation is rendered as."""

    png = "png"
    json = "json"
    overlay = "overlay"
    probabilities = "probabilities"
    confidence = "confidence"


MEDIA_TYPES = {OutputFormat.png: "image/png", OutputFormat.json: "application/json",
               OutputFormat.overlay: "image/jpeg",
               OutputFormat.probabilities: probability_outputs.NPZ_MEDIA_TYPE,
               OutputFormat.confidence: "image/png"}


@dataclasses.dataclass(frozen=True)
class Prepared:
    """An image ready for the model."""

    canvas: np.ndarray  # uint8 [S, S, 3]
    valid: tuple[int, int]  # (height, width) of the image inside the canvas
    size: tuple[int, int]  # (width, height) of the image, EXIF-oriented
    image: Image.Image | None  # kept only when the output needs the pixels (overlay)


def prepare(image: Image.Image, input_size: int, *, keep_image: bool = False,
            size: tuple[int, int] | None = None) -> Prepared:
    """Letterboxes a decoded RGB image (``size``: its true size if decoded reduced)."""
    canvas, valid = preprocessing.letterbox(image, input_size)
    return Prepared(canvas, valid, size or image.size, image if keep_image else None)


def decode(data: bytes, *, max_pixels: int, input_size: int, keep_image: bool,
           fast_jpeg: bool = False) -> Prepared:
    """Decodes and letterboxes one upload.

    By default every image is decoded in full, so the model sees DeepLab's exact input
    (and the mask equals the offline command's); ``fast_jpeg`` trades that for speed.

    Raises:
        imaging.ImageError: unsupported, corrupt or too large (see its subclasses).
    """
    if keep_image or not fast_jpeg:  # the overlay blends the full-resolution pixels
        image = imaging.load_image(data, max_pixels=max_pixels)
        return prepare(image, input_size, keep_image=keep_image)
    # A big JPEG is decoded at reduced (DCT) scale: it is downsampled anyway.
    image, size = imaging.load_image_for_model(data, max_pixels=max_pixels,
                                               input_size=input_size)
    return prepare(image, input_size, size=size)


def run(segmenter: Segmenter, prepared: Sequence[Prepared]) -> np.ndarray:
    """One model call for the batch: uint8 labels [N, S, S]."""
    return segmenter(np.stack([p.canvas for p in prepared]),
                     np.array([p.valid for p in prepared], np.int32))


def restore(labels: np.ndarray, prepared: Prepared) -> np.ndarray:
    """Model labels [S, S] -> uint8 class ids [height, width] at the image's own size."""
    return preprocessing.restore_mask(labels, prepared.valid, prepared.size)


def render(labels: np.ndarray, prepared: Prepared, output: OutputFormat,
           metadata: ModelMetadata, classes: tuple[int, ...] | None = None) -> bytes:
    """Model labels [S, S] -> the body in the requested format (``png``, ``json`` without
    confidences, ``overlay``); ``classes``: the others become background."""
    mask = probability_outputs.filter_mask(restore(labels, prepared), classes)
    return _render_mask(mask, prepared.image, output, metadata, None)


def _render_mask(mask: np.ndarray, image: Image.Image | None, output: OutputFormat,
                 metadata: ModelMetadata, confidences: dict[int, float] | None) -> bytes:
    if output is OutputFormat.png:
        return encoding.mask_png(mask)
    if output is OutputFormat.json:
        summary = encoding.summary(mask, metadata, confidences)
        return json.dumps(summary, separators=(",", ":")).encode()
    if output is not OutputFormat.overlay:
        raise ValueError(f"format={output.value} needs probabilities: use render_probabilities")
    if image is None:
        raise ValueError("an overlay needs the image: prepare it with keep_image=True")
    return encoding.overlay_jpeg(image, mask)


def working_bytes(size: tuple[int, int], input_size: int, num_classes: int,
                  options: InferenceOptions, output: OutputFormat, *, batch_size: int = 1,
                  max_model_pixels: int | None = None, max_tiles: int | None = None) -> int:
    """An upper estimate of the memory one (width, height) image's request holds at once:
    ``augmented.working_bytes`` on the probabilities path; on the single pass the decoded
    image (and its RGB copy), the canvas and labels, the mask and the encoded body.

    Raises:
        augmented.WorkTooLargeError: the probabilities path's plan is over the limits.
    """
    if needs_group(options, output):
        plan = augmented.plan_for(size, input_size, options, max_model_pixels=max_model_pixels,
                                  max_tiles=max_tiles)
        return augmented.working_bytes(plan, num_classes, batch_size=batch_size,
                                       with_planes=output is OutputFormat.probabilities)
    width, height = size
    return 9 * width * height + 8 * input_size * input_size


def needs_group(options: InferenceOptions, output: OutputFormat) -> bool:
    """Whether this request takes the probabilities path (``decode_group`` ...)."""
    return augmented.needs_probabilities(options, output.value)


@dataclasses.dataclass(frozen=True)
class PreparedGroup:
    """An image cut into every model input its options need."""

    image: Image.Image  # RGB, EXIF-oriented, full resolution
    plan: tiling.ImagePlan
    canvases: np.ndarray  # uint8 [N, S, S, 3]
    sizes: np.ndarray  # int32 [N, 2] valid (rows, cols) of each input


def prepare_group(image: Image.Image, input_size: int, options: InferenceOptions, *,
                  max_model_pixels: int | None = None,
                  max_tiles: int | None = None) -> PreparedGroup:
    """Plans and cuts a decoded RGB image.

    Raises:
        augmented.WorkTooLargeError: over ``max_model_pixels`` (tiles x S^2) or
            ``max_tiles``, before any tile is cut.
    """
    plan = augmented.plan_for(image.size, input_size, options,
                              max_model_pixels=max_model_pixels, max_tiles=max_tiles)
    canvases, sizes = tiling.cut_image(image, plan)
    return PreparedGroup(image, plan, canvases, sizes)


def decode_group(data: bytes, *, max_pixels: int, input_size: int, options: InferenceOptions,
                 max_model_pixels: int | None = None,
                 max_tiles: int | None = None) -> PreparedGroup:
    """Decodes one upload in full (never reduced: tiles want every pixel) and cuts it.

    Raises:
        imaging.ImageError: unsupported, corrupt or too large, or too much work.
    """
    image = imaging.load_image(data, max_pixels=max_pixels)
    return prepare_group(image, input_size, options, max_model_pixels=max_model_pixels,
                         max_tiles=max_tiles)


def _probabilities_fn(segmenter: Segmenter) -> augmented.ProbabilitiesFn:
    probabilities = probabilities_of(segmenter)
    if probabilities is None:
        from model.inference.contract import ProbabilitiesUnavailableError

        raise ProbabilitiesUnavailableError(
            f"the {getattr(segmenter, 'runtime', '?')} runtime gives no class probabilities "
            "(needed by tiling, scales, flip and the probability formats)")
    return probabilities


def run_group(segmenter: Segmenter, group: PreparedGroup, *,
              batch_size: int = 8) -> list[np.ndarray]:
    """The group's inputs through the segmenter's ``probabilities``, ``batch_size`` at a time
    (every result kept: ``segment_group`` folds them in as they come instead).

    Raises:
        contract.ProbabilitiesUnavailableError: the runtime gives no probabilities.
    """
    probabilities = _probabilities_fn(segmenter)
    results = [probabilities(group.canvases[i:i + batch_size], group.sizes[i:i + batch_size])
               for i in range(0, len(group.canvases), batch_size)]
    return list(np.concatenate(results)) if results else []


def segment_group(segmenter: Segmenter, group: PreparedGroup, options: InferenceOptions, *,
                  batch_size: int = 8, with_planes: bool = False) -> augmented.Rendered:
    """Runs the group ``batch_size`` inputs at a time, folding each batch's probabilities
    into the merge at once (memory bounded by ``augmented.working_bytes``).

    Raises:
        contract.ProbabilitiesUnavailableError: the runtime gives no probabilities.
    """
    probabilities = _probabilities_fn(segmenter)
    resolver = start_group(group, options, with_planes=with_planes)
    for start in range(0, len(group.canvases), batch_size):
        batch = probabilities(group.canvases[start:start + batch_size],
                              group.sizes[start:start + batch_size])
        for offset, tile in enumerate(batch):
            resolver.add(start + offset, tile)
        del batch
    return resolver.result()


def start_group(group: PreparedGroup, options: InferenceOptions, *,
                with_planes: bool = False) -> augmented.StreamingResolve:
    """A resolver to feed the group's results to, one at a time, as they arrive."""
    return augmented.StreamingResolve(group.plan, options.classes, with_planes=with_planes)


def resolve_group(probabilities: Sequence[np.ndarray], group: PreparedGroup,
                  options: InferenceOptions, *, with_planes: bool = False) -> augmented.Rendered:
    """Every input's probabilities [S, S, C] -> blended, averaged -> mask, confidence (and
    quantized planes) at the image's size."""
    resolver = start_group(group, options, with_planes=with_planes)
    for index, tile in enumerate(probabilities):
        resolver.add(index, tile)
    return resolver.result()


def render_probabilities(probabilities: Sequence[np.ndarray], group: PreparedGroup,
                         output: OutputFormat, options: InferenceOptions,
                         metadata: ModelMetadata) -> bytes:
    """Every input's probabilities [S, S, C] -> the body in the requested format."""
    rendered = resolve_group(probabilities, group, options,
                             with_planes=output is OutputFormat.probabilities)
    return render_resolved(rendered, group, output, metadata)


def render_resolved(rendered: augmented.Rendered, group: PreparedGroup, output: OutputFormat,
                    metadata: ModelMetadata) -> bytes:
    """A resolved group (``StreamingResolve.result``) -> the body in the requested format."""
    if output is OutputFormat.probabilities:
        return probability_outputs.probabilities_npz(rendered.planes, rendered.class_ids,
                                                     metadata.labels, rendered.mask)
    if output is OutputFormat.confidence:
        return probability_outputs.confidence_png(rendered.confidence)
    return _render_mask(rendered.mask, group.image, output, metadata,
                        rendered.class_confidences)


def segment_images(segmenter: Segmenter, images: Sequence[Image.Image]) -> list[np.ndarray]:
    """Full DeepLab inference on RGB PIL images, one model call for the batch.

    Returns:
        one uint8 [height, width] mask per image, at the image's own size.
    """
    size = segmenter.metadata.input_size
    prepared = [prepare(image, size) for image in images]
    return [restore(labels, p) for labels, p in zip(run(segmenter, prepared), prepared,
                                                     strict=True)]


def segment_masks(segmenter: Segmenter, images: Sequence[Image.Image], options: InferenceOptions,
                  *, batch_size: int = 8) -> list[np.ndarray]:
    """The class-id masks ``atrous segment`` and ``atrous segment-dataset`` write as PNGs.

    The single pass (DeepLab's) is one model call for the whole list; tiling, scales or
    flip take the probabilities path, image by image, ``batch_size`` inputs at a time.
    ``options.classes`` applies on both.

    Returns:
        one uint8 [height, width] mask per image, at the image's own size.
    """
    if options.single_pass:
        return [probability_outputs.filter_mask(mask, options.classes)
                for mask in segment_images(segmenter, images)]
    masks = []
    for image in images:  # each batch's probabilities are blended in at once (bounded memory)
        group = prepare_group(image, segmenter.metadata.input_size, options)
        masks.append(segment_group(segmenter, group, options, batch_size=batch_size).mask)
    return masks
