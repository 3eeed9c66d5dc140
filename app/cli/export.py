"""atrous export: a checkpoint (or random weights) -> a SavedModel."""

import argparse
from pathlib import Path

from app.cli.options import add_model_options, model_config, untrained_warnings_to_stderr


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("export", help="write a SavedModel")
    parser.add_argument("--checkpoint", help="weights; omitted: random (warned)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--overwrite", action="store_true")
    add_model_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from model.export import export_saved_model

    with untrained_warnings_to_stderr():
        metadata = export_saved_model(model_config(args), args.out, checkpoint=args.checkpoint,
                                      overwrite=args.overwrite)
    print(f"wrote {args.out} ({metadata.backbone}, OS{metadata.output_stride}, "
          f"{metadata.precision}, trained={str(metadata.trained).lower()})")
    return 0
