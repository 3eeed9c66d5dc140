"""atrous eval: mIoU, per-class IoU and pixel accuracy of a RUN, checkpoint or SavedModel."""

import argparse
import json
from pathlib import Path
from typing import Any

from app.cli.options import add_model_options, model_config


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}") from None



def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "eval", help="mIoU, per-class IoU and pixel accuracy of a RUN or SavedModel",
        description="Single scale runs the exported SavedModel through the server's own "
                    "pipeline; several --scales and/or --flip average probabilities "
                    "(DeepLab's eval) and need a checkpoint or RUN.")
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--checkpoint", required=True,
                        help="a RUN directory (needs no network flags), a checkpoint "
                             "(with the network flags) or a SavedModel directory")
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
    add_model_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from app.settings import Settings
    from model.inference.contract import ModelMetadata
    from model.train import evaluate

    multi = len(args.scales) > 1 or args.scales != [1.0] or args.flip
    saved_model = (Path(args.checkpoint) / "saved_model.pb").is_file()
    if saved_model:
        if multi:
            raise ValueError("multi-scale/flip evaluation needs the checkpoint (a SavedModel "
                             "returns labels, not probabilities); pass the RUN directory")
        metadata = ModelMetadata.read(args.checkpoint)
        segmenter: Any = _runner(args.checkpoint)
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
            segmenter = _runner(cached_export(config, cache, checkpoint=args.checkpoint))
    result = evaluate.evaluate(segmenter, args.data, args.split, num_classes,
                               batch_size=args.batch_size, save_predictions=args.save_predictions,
                               scales=args.scales, flip=args.flip)
    print(f"{result.images} images of {args.split}, scales {args.scales}"
          f"{' + flip' if args.flip else ''}")
    print(result.confusion.table(list(segmenter.metadata.labels)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(
            dict(result.to_dict(), per_class_iou=result.confusion.to_dict(
                list(segmenter.metadata.labels))["per_class_iou"]), indent=2) + "\n")
    return 0


def _runner(path: str | Path) -> Any:
    from model.inference.runtimes import load_runtime

    return load_runtime(path)


