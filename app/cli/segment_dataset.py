"""atrous segment-dataset: a directory, glob, manifest or bucket of images -> one result row
per image (Parquet, or PNG masks and a manifest), on Ray Data or a local loop; resumable."""

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from app.cli.options import (
    add_model_options,
    add_runtime_options,
    model_config,
    untrained_warnings_to_stderr,
)

_SHOWN_FAILURES = 20


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "segment-dataset", help="segment an image set in bulk (Ray Data or local), resumable",
        description="SRC: a directory (recursive), a glob, a text manifest of paths/URIs, or "
                    "an fsspec URL (s3://, gs://, file://). DST: likewise a folder or URL. "
                    "Exit status: 0 all ok, 1 some images failed, 2 the job failed.")
    parser.add_argument("source", metavar="SRC")
    parser.add_argument("destination", metavar="DST")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--model", type=Path,
                       help="exported model directory (SavedModel, OpenVINO or ONNX), "
                            "visible to every worker")
    where.add_argument("--checkpoint", help="a checkpoint or training RUN (exported once)")
    parser.add_argument("--engine", choices=("ray", "local"), default="ray",
                        help="ray: a Ray Data actor pool (pip install 'atrous[ray]'); "
                             "local: the same per-batch code in this process")
    parser.add_argument("--address", help="Ray cluster to join [default: $RAY_ADDRESS, "
                                          "else a local Ray for this job]")
    parser.add_argument("--workers", type=int, default=1,
                        help="Ray actors, each with the model loaded once")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--cpus-per-worker", type=float, default=None,
                        help="default: one machine's CPUs shared out, else 1 on a cluster")
    parser.add_argument("--max-restarts", type=int, default=3,
                        help="restarts of a crashed actor (its batch is retried on the "
                             "restarted actor); at least 2 for the crash quarantine")
    parser.add_argument("--batch-size", type=int, default=4, help="images per model call")
    parser.add_argument("--output", choices=("parquet", "png"), default="parquet",
                        help="parquet: masks inside the rows; png: DST/<key>.png and "
                             "DST/_manifest/")
    parser.add_argument("--tiling", choices=("off", "auto", "on"), default="off")
    parser.add_argument("--scales", help="test-time scales, e.g. 0.5,0.75,1,1.25,1.5,1.75")
    parser.add_argument("--flip", action="store_true", help="also run the mirrored image")
    parser.add_argument("--classes", help="labels or ids to keep, e.g. person,dog")
    parser.add_argument("--resume", action="store_true",
                        help="continue the job in DST: images with an ok row are skipped")
    parser.add_argument("--max-pixels", type=int, default=40_000_000)
    parser.add_argument("--max-bytes", type=int, default=256 * 2**20,
                        help="larger files are error rows, never read")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_runtime_options(parser)
    add_model_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from app.batch import JobConfig, JobFailedError, ModelSpec, RayOptions, segment_dataset
    from model.inference.tiling import parse_scales

    spec = ModelSpec(
        model=str(_model_dir(args)), runtime=args.runtime, threads=args.threads,
        inference_precision=args.inference_precision,
        tiling=args.tiling, scales=parse_scales(args.scales) if args.scales else (1.0,),
        flip=args.flip, classes=tuple(args.classes.split(",")) if args.classes else None,
        max_pixels=args.max_pixels)
    _check_options(spec)
    config = JobConfig(
        source=str(args.source), destination=str(args.destination), model=spec,
        engine=args.engine, batch_size=args.batch_size, output=args.output, resume=args.resume,
        max_bytes=args.max_bytes, progress=not args.no_progress,
        ray=RayOptions(address=args.address, workers=args.workers,
                       gpus_per_worker=args.gpus_per_worker,
                       cpus_per_worker=args.cpus_per_worker, max_restarts=args.max_restarts))
    # SIGTERM as Ctrl-C: the engine's cleanup runs (a local Ray is shut down); every part
    # already written is whole, so --resume continues from there.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = segment_dataset(config)
    except JobFailedError as e:
        _print(e.report)
        print(f"atrous segment-dataset: the job failed: {e}; rerun with --resume to continue",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("atrous segment-dataset: interrupted; rerun with --resume to continue",
              file=sys.stderr)
        return 2
    _print(report)
    return report.exit_code


def _model_dir(args: argparse.Namespace) -> Path:
    if args.model:
        return Path(args.model)
    from app.settings import Settings
    from model.export import cached_export

    with untrained_warnings_to_stderr():
        return Path(cached_export(model_config(args), Settings.model_fields["cache_dir"].default,
                                  checkpoint=args.checkpoint))


def _check_options(spec: Any) -> None:
    """A bad --tiling/--scales/--classes fails here (exit 2), not in every worker; the
    model's labels come from its metadata file, without loading it."""
    from app.batch.rows import inference_options
    from model.inference.contract import ModelMetadata

    inference_options(spec, ModelMetadata.read(spec.model).labels)


def _print(report: Any) -> None:
    print(f"segmented {report.ok} of {report.inputs} images into {report.destination} "
          f"({report.errors} errors, {report.skipped} skipped as done, "
          f"{len(report.missing)} not reached); {report.processed} run in "
          f"{report.seconds:.1f} s, {report.images_per_s:.2f} images/s"
          + (f" (Ray start-up {report.startup_seconds:.1f} s)" if report.startup_seconds else ""))
    for key, (code, message) in sorted(report.failed.items())[:_SHOWN_FAILURES]:
        print(f"error: {key}: {code}: {message}", file=sys.stderr)
    if report.errors > _SHOWN_FAILURES:
        print(f"... and {report.errors - _SHOWN_FAILURES} more: see _summary.json",
              file=sys.stderr)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
