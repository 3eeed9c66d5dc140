"""atrous export: a checkpoint (or random weights) -> a SavedModel, OpenVINO or ONNX model.

``--format openvino|onnx`` converts a SavedModel (exported on the way from ``--checkpoint``,
or given with ``--model``); ``--int8 --calibration DIR`` quantizes it (docs/runtimes.md).
"""

import argparse
import tempfile
from pathlib import Path
from typing import Any

from app.cli.options import add_model_options, model_config, untrained_warnings_to_stderr

FORMATS = ("savedmodel", "openvino", "onnx")


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "export", help="write a SavedModel, OpenVINO or ONNX model",
        description="Writes a model directory with atrous.json beside the network; "
                    "see docs/runtimes.md for the formats and --int8.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="weights; omitted: random (warned)")
    source.add_argument("--model", type=Path,
                        help="an export to convert: a SavedModel (to --format openvino|onnx), "
                             "or an fp32 export of --format to quantize (--int8)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--format", choices=FORMATS, default="savedmodel")
    parser.add_argument("--int8", action="store_true",
                        help="post-training INT8 quantization (openvino, onnx); needs "
                             "--calibration")
    parser.add_argument("--calibration", type=Path,
                        help="folder of images, or a PASCAL VOC directory (its train split)")
    parser.add_argument("--calibration-size", type=int, default=32,
                        help="calibration images used (spread over the folder)")
    add_model_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.int8 and args.format == "savedmodel":
        raise ValueError("--int8 needs --format openvino or onnx")
    if args.format == "savedmodel":
        if args.model is not None:
            raise ValueError("--model is the source of a conversion: "
                             "use it with --format openvino or onnx")
        metadata = _export_saved_model(args, args.out, overwrite=args.overwrite)
    else:
        metadata = _export_converted(args)
    print(f"wrote {args.out} ({metadata.format}, {metadata.backbone}, "
          f"OS{metadata.output_stride}, {metadata.precision}, "
          f"trained={str(metadata.trained).lower()})")
    return 0


def _export_saved_model(args: argparse.Namespace, out: Path, *, overwrite: bool) -> Any:
    from model.export import export_saved_model

    with untrained_warnings_to_stderr():
        return export_saved_model(model_config(args), out, checkpoint=args.checkpoint,
                                  overwrite=overwrite)


def _export_converted(args: argparse.Namespace) -> Any:
    from model.convert import convert_model

    if args.precision != "fp32":
        raise ValueError(f"--format {args.format} converts an fp32 SavedModel; "
                         "drop --precision (the runtime picks its compute precision)")
    with tempfile.TemporaryDirectory(prefix="atrous-export-") as scratch:
        source = args.model
        if source is None:  # from a checkpoint (or random weights): a SavedModel first
            source = Path(scratch) / "savedmodel"
            _export_saved_model(args, source, overwrite=False)
        return convert_model(source, args.out, args.format, int8=args.int8,
                             calibration=args.calibration,
                             calibration_size=args.calibration_size, overwrite=args.overwrite)
