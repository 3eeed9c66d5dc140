"""The atrous command: serve, export, segment, fetch-weights, bench.

Each subcommand imports what it needs when it runs, so ``atrous --help`` is instant
and ``atrous segment --url`` works without loading TensorFlow.
"""

import argparse
import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from model.config import DEFAULT_BACKBONE, DEFAULT_INPUT_SIZE, HEADS, OUTPUT_STRIDES, PRECISIONS


def _model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("network (when building from a checkpoint)")
    group.add_argument("--backbone", default=DEFAULT_BACKBONE)
    group.add_argument("--output-stride", type=int, default=16, choices=OUTPUT_STRIDES)
    group.add_argument("--num-classes", type=int, default=21)
    group.add_argument("--head", default="logits", choices=HEADS)
    group.add_argument("--input-size", type=int, default=DEFAULT_INPUT_SIZE)
    group.add_argument("--precision", default="fp32", choices=PRECISIONS)


def _model_config(args: argparse.Namespace) -> Any:
    from model.config import ModelConfig

    return ModelConfig(backbone=args.backbone, output_stride=args.output_stride,
                       num_classes=args.num_classes, head=args.head,
                       input_size=args.input_size)


def _settings_options(parser: argparse.ArgumentParser) -> None:
    """One option per Settings field, so the CLI never drifts from the environment variables.

    Values stay strings (booleans are --x/--no-x): the Settings class parses and validates
    them exactly as it does ATROUS_* variables.
    """
    from app.settings import Settings

    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = f"ATROUS_{name.upper()}"
        default = "unset" if field.default is None else field.default
        help_text = f"{field.description or ''} [{env}, default {default}]".strip()
        if field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        else:
            parser.add_argument(flag, metavar=name.upper(), help=help_text)


def cmd_serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from app.main import serve
    from app.settings import Settings

    overrides = {k: v for k, v in vars(args).items()
                 if k in Settings.model_fields and v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        print(f"atrous serve: invalid settings:\n{e}", file=sys.stderr)
        return 2
    serve(settings)
    return 0


@contextlib.contextmanager
def _untrained_warnings_to_stderr() -> Iterator[None]:
    """An untrained export is worth one plain line on stderr, not a Python warning."""
    from model.export import UntrainedModelWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UntrainedModelWarning)
        yield
    for warning in caught:
        if issubclass(warning.category, UntrainedModelWarning):
            print(f"warning: {warning.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)


def cmd_export(args: argparse.Namespace) -> int:
    from model.export import export_saved_model

    with _untrained_warnings_to_stderr():
        metadata = export_saved_model(_model_config(args), args.out, checkpoint=args.checkpoint,
                                      precision=args.precision, overwrite=args.overwrite)
    print(f"wrote {args.out} ({metadata.backbone}, OS{metadata.output_stride}, "
          f"{metadata.precision}, trained={str(metadata.trained).lower()})")
    return 0


def _batches(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _local_segmenter(args: argparse.Namespace) -> Callable[[list[Any]], list[Any]]:
    from app.settings import Settings
    from model.export import cached_export
    from model.runner import SavedModelRunner, segment_images

    if args.model:
        model = args.model
    else:
        with _untrained_warnings_to_stderr():
            model = cached_export(_model_config(args), Settings.model_fields["cache_dir"].default,
                                  checkpoint=args.checkpoint, precision=args.precision)
    runner = SavedModelRunner(model)
    return lambda images: segment_images(runner, images)


def cmd_segment(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        segment = _remote_segmenter(args.url, stack) if args.url else _local_segmenter(args)
        failures = _segment_files(args, segment)
    done = len(args.images) - failures
    print(f"segmented {done} of {len(args.images)} images into {args.out}")
    return 1 if failures else 0


def _segment_files(args: argparse.Namespace, segment: Callable[[list[Any]], list[Any]]) -> int:
    """Segments ``args.images`` in batches, writing one file each; returns the failures."""
    from tqdm import tqdm

    from app.encoding import mask_png, overlay_jpeg
    from model.imaging import ImageError, load_image

    failures = 0
    suffix = ".png" if args.format == "png" else ".jpg"
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
                data = mask_png(mask) if args.format == "png" else overlay_jpeg(image, mask)
                (args.out / (path.stem + suffix)).write_bytes(data)
                bar.update()
    return failures


def _remote_segmenter(url: str,
                      stack: contextlib.ExitStack) -> Callable[[list[Any]], list[Any]]:
    try:
        from atrous_client import AtrousClient
    except ImportError:
        raise SystemExit("atrous segment --url needs the SDK: pip install ./client") from None
    client = stack.enter_context(AtrousClient(base_url=url))

    def segment(images: list[Any]) -> list[Any]:
        # Images go up decoded and oriented (as lossless PNG), so the server sees exactly
        # the pixels the offline command would segment; errors come back per image.
        results = client.segment_many(images, concurrency=len(images))
        return [r if isinstance(r, Exception) else r.mask for r in results]

    return segment


def cmd_fetch_weights(args: argparse.Namespace) -> int:
    from model.weights import DEFAULT_CACHE, WeightsError, fetch_weights

    try:
        path = fetch_weights(args.backbone, source=args.url,
                             cache_dir=args.cache_dir or DEFAULT_CACHE, sha256=args.sha256,
                             force=args.force)
    except (WeightsError, ValueError) as e:
        print(f"atrous fetch-weights: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from model import bench

    plan = [("classification", 32)] if args.setting in ("classification", "all") else []
    if args.setting in ("segmentation", "all"):
        plan += [("segmentation", b) for b in args.batch_sizes]
    print(bench.HEADER)
    for setting, batch in plan:
        result = bench.time_forward(setting, batch, num_batches=args.batches,
                                    burn_in=args.burn_in, precision=args.precision, xla=args.xla)
        print(result.row(), flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atrous", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", help="run the HTTP server",
        description="Every option is also an ATROUS_* environment variable; options win.")
    _settings_options(serve)
    serve.set_defaults(run=cmd_serve)

    export = commands.add_parser("export", help="write a SavedModel")
    export.add_argument("--checkpoint", help="weights; omitted: random (warned)")
    export.add_argument("--out", required=True, type=Path)
    export.add_argument("--overwrite", action="store_true")
    _model_options(export)
    export.set_defaults(run=cmd_export)

    segment = commands.add_parser("segment", help="segment image files into masks")
    segment.add_argument("images", nargs="+", type=Path)
    where = segment.add_mutually_exclusive_group()
    where.add_argument("--checkpoint")
    where.add_argument("--model", type=Path, help="SavedModel directory")
    where.add_argument("--url", help="a running atrous server (uses the SDK)")
    segment.add_argument("-o", "--out", required=True, type=Path)
    segment.add_argument("--format", choices=("png", "overlay"), default="png")
    segment.add_argument("--batch-size", type=int, default=4)
    segment.add_argument("--max-pixels", type=int, default=40_000_000)
    _model_options(segment)
    segment.set_defaults(run=cmd_segment)

    fetch = commands.add_parser("fetch-weights", help="download an ImageNet checkpoint")
    fetch.add_argument("backbone")
    fetch.add_argument("--url", help="URL, file:// URL or path (default: the official tarball)")
    fetch.add_argument("--cache-dir", default=None, help="default: ~/.cache/atrous/weights")
    fetch.add_argument("--sha256")
    fetch.add_argument("--force", action="store_true")
    fetch.set_defaults(run=cmd_fetch_weights)

    bench = commands.add_parser("bench", help="forward-pass timing harness")
    bench.add_argument("--setting", choices=("classification", "segmentation", "all"),
                       default="all")
    bench.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")],
                       default=[1, 4, 8])
    bench.add_argument("--batches", type=int, default=20, help="timed batches")
    bench.add_argument("--burn-in", type=int, default=10)
    bench.add_argument("--precision", choices=PRECISIONS, default="fp32")
    bench.add_argument("--xla", action="store_true")
    bench.set_defaults(run=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileExistsError) as e:  # config and checkpoint errors: no traceback
        print(f"atrous {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
