"""atrous bench: the forward-pass timing harness."""

import argparse

from app.cli.options import batch_size
from model.config import PRECISIONS


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("bench", help="forward-pass timing harness")
    parser.add_argument("--setting", choices=("classification", "segmentation", "all"),
                        default="all")
    parser.add_argument("--batch-sizes", type=batch_size, default=[1, 4, 8])
    parser.add_argument("--batches", type=int, default=20, help="timed batches")
    parser.add_argument("--burn-in", type=int, default=10)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--xla", action="store_true")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
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
