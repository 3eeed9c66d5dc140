"""The atrous command: one module per subcommand, each adding its own parser.

Each subcommand imports what it needs when it runs, so ``atrous --help`` is instant
and ``atrous segment --url`` works without loading TensorFlow.  Their ``add_parser``
functions look alike on purpose: plain argparse declarations, each read beside the command
it configures (the shared model flags are ``options.add_model_options``).
"""

import argparse
import logging
import sys
from collections.abc import Sequence

from app.cli import bench, data, eval, export, segment, segment_dataset, serve, train, weights
from app.cli.quiet import quiet_tensorflow

DESCRIPTION = "atrous: DeepLab-style semantic segmentation (serve, export, segment, ...)"
# A new command is a module with add_parser(commands) and one entry here.
COMMANDS = (serve, export, segment, segment_dataset, weights, bench, train, eval, data)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atrous", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and TensorFlow's start-up and deprecation messages")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Before any command imports TensorFlow: its start-up chatter only with -v.
    quiet_tensorflow(args.verbose)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileExistsError) as e:  # config and checkpoint errors: no traceback
        print(f"atrous {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
