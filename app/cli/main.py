"""The atrous command: one module per subcommand, each adding its own parser.

Each subcommand imports what it needs when it runs, so ``atrous --help`` is instant
and ``atrous segment --url`` works without loading TensorFlow.
"""

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from app.cli import bench, data, eval, export, segment, segment_dataset, serve, train, weights

DESCRIPTION = "atrous: DeepLab-style semantic segmentation (serve, export, segment, ...)"
# A new command is a module with add_parser(commands) and one entry here.
COMMANDS = (serve, export, segment, segment_dataset, weights, bench, train, eval, data)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atrous", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(commands)
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
