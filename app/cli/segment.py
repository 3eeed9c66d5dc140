"""atrous segment: image files -> mask PNGs, overlays, probabilities or confidences, locally
or through a server; optionally tiled (large images), multi-scale + flip, class-filtered."""

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from app.cli.options import (
    add_model_options,
    add_runtime_options,
    model_config,
    untrained_warnings_to_stderr,
)

Segment = Callable[[list[Any]], list[Any]]


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("segment", help="segment image files into masks")
    parser.add_argument("images", nargs="+", type=Path)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--checkpoint")
    where.add_argument("--model", type=Path,
                       help="exported model directory (SavedModel, OpenVINO or ONNX)")
    where.add_argument("--url", help="a running atrous server (uses the SDK)")
    parser.add_argument("--api-key", help="for --url: the server's API key "
                        "[default: $ATROUS_API_KEY]")
    parser.add_argument("--model-name", help="for --url: the model to use on a server with "
                        "several (`GET /v1/models`) [default: the server's default model]")
    parser.add_argument("--model-version", type=int,
                        help="for --url with --model-name: that version [default: the newest]")
    parser.add_argument("-o", "--out", required=True, type=Path)
    parser.add_argument("--format", default="png",
                        choices=("png", "overlay", "probabilities", "confidence"),
                        help="probabilities: an .npz of uint8 planes; confidence: a greyscale "
                             "PNG (see docs/http-api.md)")
    parser.add_argument("--tiling", choices=("off", "auto", "on"), default="off",
                        help="on: overlapping tiles at native resolution (large images); "
                             "auto: when the longer side exceeds twice the input size")
    parser.add_argument("--scales", help="test-time scales, e.g. 0.5,0.75,1,1.25,1.5,1.75")
    parser.add_argument("--flip", action="store_true", help="also run the mirrored image")
    parser.add_argument("--classes", help="labels or ids to keep, e.g. person,dog")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-pixels", type=int, default=40_000_000)
    add_runtime_options(parser)
    add_model_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    for given, flag in ((args.api_key, "--api-key"), (args.model_name, "--model-name"),
                        (args.model_version, "--model-version")):
        if given is not None and not args.url:
            print(f"atrous segment: {flag} goes with --url", file=sys.stderr)
            return 2
    if args.model_version is not None and args.model_name is None:
        print("atrous segment: --model-version goes with --model-name", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if args.url:
            remote = _remote_segmenter(args, stack)
            if remote is None:
                return 2
            segment = remote
        else:
            segment = _local_segmenter(args)
        failures = _segment_files(args, segment)
    done = len(args.images) - failures
    print(f"segmented {done} of {len(args.images)} images into {args.out}")
    return 1 if failures else 0


def _options(args: argparse.Namespace, labels: Sequence[str]) -> Any:
    """``--tiling --scales --flip --classes`` as ``InferenceOptions`` (ValueError: exit 2)."""
    from model.inference.options import InferenceOptions, parse_classes
    from model.inference.tiling import parse_scales

    return InferenceOptions(
        tiling=args.tiling, scales=parse_scales(args.scales) if args.scales else (1.0,),
        flip=args.flip, classes=parse_classes(args.classes, labels) if args.classes else None)


def _local_segmenter(args: argparse.Namespace) -> Segment:
    from app.settings import Settings
    from model.inference import pipeline
    from model.inference.runtimes import load_runtime

    if args.model:
        model = args.model
    else:
        from model.export import cached_export

        with untrained_warnings_to_stderr():
            model = cached_export(model_config(args), Settings.model_fields["cache_dir"].default,
                                  checkpoint=args.checkpoint)
    segmenter = load_runtime(model, args.runtime, threads=args.threads,
                             inference_precision=args.inference_precision)
    print(f"runtime: {segmenter.runtime} {segmenter.runtime_version} on {segmenter.device}",
          file=sys.stderr)
    args.labels = segmenter.metadata.labels
    options = _options(args, args.labels)
    output = pipeline.OutputFormat(args.format)
    if output in (pipeline.OutputFormat.png, pipeline.OutputFormat.overlay):
        # The masks segment-dataset writes too (app.batch): one function for both.
        return lambda images: pipeline.segment_masks(segmenter, images, options,
                                                     batch_size=args.batch_size)

    def segment(images: list[Any]) -> list[Any]:
        results = []
        for image in images:
            group = pipeline.prepare_group(image, segmenter.metadata.input_size, options)
            # Each batch's probabilities are blended in at once: memory follows the output.
            results.append(pipeline.segment_group(
                segmenter, group, options, batch_size=args.batch_size,
                with_planes=output.value == "probabilities"))
        return results

    return segment


def _remote_segmenter(args: argparse.Namespace, stack: contextlib.ExitStack) -> Segment | None:
    """Segments through the server at ``args.url``; None (after saying why) if it refuses the
    key."""
    try:
        from atrous_client import AtrousClient, AtrousError, AuthenticationError
    except ImportError:
        raise SystemExit("atrous segment --url needs the SDK: pip install ./client") from None
    from model.inference.augmented import Rendered
    from model.inference.probabilities import quantize

    url = args.url
    # api_key None: the SDK reads $ATROUS_API_KEY.
    client = stack.enter_context(AtrousClient(base_url=url, api_key=args.api_key,
                                              model=args.model_name,
                                              version=args.model_version))
    try:
        client.model_info()  # a refused key fails once here, not once per image
    except AuthenticationError as e:
        print(f"atrous segment: {url}: {e.message} (--api-key or ATROUS_API_KEY)",
              file=sys.stderr)
        return None
    except AtrousError:  # unreachable, not ready, ...: reported per image below
        pass
    planes = args.format in ("probabilities", "confidence")
    options = {"tiling": args.tiling, "flip": args.flip,
               "scales": [float(s) for s in args.scales.split(",")] if args.scales else None,
               "classes": args.classes.split(",") if args.classes else None}

    def segment(images: list[Any]) -> list[Any]:
        # Images go up decoded and oriented (as lossless PNG), so the server sees exactly
        # the pixels the offline command would segment; errors come back per image.
        results = client.segment_many(images, concurrency=len(images),
                                      format="probabilities" if planes else "png", **options)
        if not planes:
            return [r if isinstance(r, Exception) else r.mask for r in results]
        for r in results:  # the planes' names, for the .npz
            if not isinstance(r, Exception):
                args.labels = r.labels
        return [r if isinstance(r, Exception)
                else Rendered(r.mask, quantize(r.confidence), quantize(r.probabilities),
                              r.class_ids)
                for r in results]

    return segment


def _batches(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _segment_files(args: argparse.Namespace, segment: Segment) -> int:
    """Segments ``args.images`` in batches, writing one file each; returns the failures."""
    from tqdm import tqdm

    from model.atomic import atomic_write_bytes
    from model.inference import probabilities as outputs
    from model.inference.encoding import mask_png, overlay_jpeg
    from model.inference.imaging import ImageError, load_image

    failures = 0
    suffix = {"overlay": ".jpg", "probabilities": ".npz"}.get(args.format, ".png")
    with tqdm(total=len(args.images), unit="image", disable=len(args.images) < 2) as bar:
        for batch in _batches(args.images, args.batch_size):
            loaded = []
            for path in batch:
                try:
                    loaded.append((path, load_image(path.read_bytes(),
                                                    max_pixels=args.max_pixels)))
                except (OSError, ImageError) as e:
                    failures += 1
                    tqdm.write(f"error: {path}: {e}", file=sys.stderr)
                    bar.update()
            if not loaded:
                continue
            try:
                masks = segment([image for _, image in loaded])
            except Exception as e:  # one bad batch (e.g. a server error) must not stop the run
                failures += len(loaded)
                tqdm.write(f"error: {', '.join(str(p) for p, _ in loaded)}: {e}", file=sys.stderr)
                bar.update(len(loaded))
                continue
            for (path, image), mask in zip(loaded, masks, strict=True):
                if isinstance(mask, Exception):  # a per-image error from the server
                    failures += 1
                    tqdm.write(f"error: {path}: {mask}", file=sys.stderr)
                    bar.update()
                    continue
                if args.format == "probabilities":
                    data = outputs.probabilities_npz(mask.planes, mask.class_ids, args.labels,
                                                     mask.mask)
                elif args.format == "confidence":
                    data = outputs.confidence_png(mask.confidence)
                else:
                    mask = getattr(mask, "mask", mask)  # a plain mask, or a resolved result
                    data = mask_png(mask) if args.format == "png" else overlay_jpeg(image, mask)
                # Atomic: an interrupted run never leaves a truncated mask behind.
                atomic_write_bytes(args.out / (path.stem + suffix), data)
                bar.update()
    return failures
