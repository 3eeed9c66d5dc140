"""atrous bench: the forward-pass timing harness, in process or through a runtime."""

import argparse
from pathlib import Path

from app.cli.options import add_runtime_options, batch_size
from model.config import PRECISIONS


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "bench", help="forward-pass timing harness",
        description="Without --model: the TensorFlow graph built in process (random weights). "
                    "With --model: an export run through --runtime, as the server runs it.")
    parser.add_argument("--model", type=Path, help="time this exported model (any format)")
    add_runtime_options(parser)
    parser.add_argument("--setting", choices=("classification", "segmentation", "all"),
                        default="all")
    parser.add_argument("--batch-sizes", type=batch_size, default=[1, 4, 8])
    parser.add_argument("--batches", type=int, default=20, help="timed batches")
    parser.add_argument("--burn-in", type=int, default=10)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--xla", action="store_true")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.model is not None:
        return _bench_model(args)
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


def _bench_model(args: argparse.Namespace) -> int:
    """Times an exported model through a runtime: the bare model call, as the server makes it."""
    from model.inference import timing
    from model.inference.runtimes import load_runtime

    segmenter = load_runtime(args.model, args.runtime, threads=args.threads,
                             inference_precision=args.inference_precision)
    print(timing.HEADER)
    for batch in args.batch_sizes:
        result = timing.time_segmenter(segmenter, batch, num_batches=args.batches,
                                       burn_in=args.burn_in)
        print(result.row(), flush=True)
    return 0
