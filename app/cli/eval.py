"""atrous eval: mIoU, per-class IoU and pixel accuracy of a RUN, checkpoint or SavedModel."""

import argparse
import json
from pathlib import Path
from typing import Any

from app.cli.options import add_model_options, add_runtime_options, model_config


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}") from None



def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "eval", help="mIoU, per-class IoU and pixel accuracy of a RUN or an export",
        description="Single scale runs the exported model (any format, through --runtime) "
                    "with the server's own pipeline; several --scales and/or --flip average "
                    "probabilities (DeepLab's eval) and need a checkpoint or RUN.")
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--checkpoint", required=True,
                        help="a RUN directory (needs no network flags), a checkpoint "
                             "(with the network flags) or an exported model directory "
                             "(SavedModel, OpenVINO IR or ONNX, fp32 or INT8)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--scales", type=_floats, default=[1.0],
                        help="e.g. 0.5,0.75,1.0,1.25,1.5,1.75")
    parser.add_argument("--flip", action="store_true", help="add mirrored inputs")
    parser.add_argument("--json", type=Path, help="write the metrics here")
    parser.add_argument("--save-predictions", type=Path, metavar="DIR",
                        help="one palette PNG per image (the server's format=png)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where the RUN's SavedModel is exported (default: the "
                             "server's export cache)")
    add_runtime_options(parser)
    add_model_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from app.settings import Settings
    from model.inference.contract import ModelMetadata
    from model.train import evaluate

    multi = len(args.scales) > 1 or args.scales != [1.0] or args.flip
    if multi and args.runtime not in ("auto", "tensorflow"):
        raise ValueError("multi-scale/flip evaluation runs the checkpoint in TensorFlow; "
                         f"--runtime {args.runtime} applies to single-scale evaluation only")
    if _is_export(args.checkpoint):
        if multi:
            raise ValueError("multi-scale/flip evaluation needs the checkpoint (an export "
                             "returns labels, not probabilities); pass the RUN directory")
        metadata = ModelMetadata.read(args.checkpoint)
        segmenter: Any = _runner(args.checkpoint, args)
        num_classes = metadata.num_classes
    else:
        config = model_config(args)
        num_classes = config.num_classes
        if multi:
            segmenter = evaluate.MultiScaleSegmenter(config, args.checkpoint, args.scales,
                                                     args.flip)
        else:
            from model.export import cached_export

            cache = args.cache_dir or Settings.model_fields["cache_dir"].default
            segmenter = _runner(cached_export(config, cache, checkpoint=args.checkpoint), args)
    result = evaluate.evaluate(segmenter, args.data, args.split, num_classes,
                               batch_size=args.batch_size, save_predictions=args.save_predictions,
                               scales=args.scales, flip=args.flip)
    print(f"{result.images} images of {args.split}, scales {args.scales}"
          f"{' + flip' if args.flip else ''}, {_described(segmenter)}")
    print(result.confusion.table(list(segmenter.metadata.labels)))
    if args.json:
        from model.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(
            dict(result.to_dict(), per_class_iou=result.confusion.to_dict(
                list(segmenter.metadata.labels))["per_class_iou"],
                 model=_described_dict(segmenter)), indent=2) + "\n")
    return 0


def _is_export(path: str | Path) -> bool:
    """Whether ``path`` is an exported model directory of any format (not a RUN/checkpoint)."""
    from model.inference.formats import MODEL_FILES

    return any((Path(path) / marker).is_file() for marker in MODEL_FILES.values())


def _runner(path: str | Path, args: argparse.Namespace) -> Any:
    from model.inference.runtimes import load_runtime

    return load_runtime(path, args.runtime, threads=args.threads,
                             inference_precision=args.inference_precision)


def _described_dict(segmenter: Any) -> dict[str, str]:
    """What ran: the export's format and precision, and the runtime (a multi-scale segmenter
    built in process has no runtime attributes: it is TensorFlow)."""
    metadata = segmenter.metadata
    return {"format": getattr(metadata, "format", "savedmodel"),
            "precision": metadata.precision,
            "runtime": getattr(segmenter, "runtime", "tensorflow"),
            "runtime_version": getattr(segmenter, "runtime_version", ""),
            "inference_precision": getattr(getattr(segmenter, "inference_precision", None),
                                           "name", metadata.precision)}


def _described(segmenter: Any) -> str:
    d = _described_dict(segmenter)
    computes = (f", computing in {d['inference_precision']}"
                if d["inference_precision"] != d["precision"] else "")
    return (f"{d['format']} {d['precision']} on {d['runtime']} {d['runtime_version']}".rstrip()
            + computes)


