"""atrous fetch-weights: the official slim ImageNet checkpoints."""

import argparse
import sys


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("fetch-weights", help="download an ImageNet checkpoint")
    parser.add_argument("backbone")
    parser.add_argument("--url", help="URL, file:// URL or path (default: the official tarball)")
    parser.add_argument("--cache-dir", default=None, help="default: ~/.cache/atrous/weights")
    parser.add_argument("--sha256")
    parser.add_argument("--force", action="store_true")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
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
