"""The training commands: ``atrous train``, ``atrous eval``, ``atrous data``.

Each ``add_*_parser`` adds one subcommand; TensorFlow is imported only when a command
runs, so ``atrous --help`` stays instant.
"""

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from model.config import DEFAULT_BACKBONE, HEADS, OUTPUT_STRIDES

log = logging.getLogger(__name__)

STRATEGIES = ("default", "mirrored", "multi-worker")
TRAIN_PRECISIONS = ("fp32", "fp16", "bf16")
_MODEL_FLAGS = ("backbone", "output_stride", "num_classes", "head", "input_size")


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}") from None


# -- atrous train -------------------------------------------------------------------------


def add_train_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "train", help="train or fine-tune a segmenter into a RUN directory",
        description="DeepLab's recipe: random scale 0.5-2.0, crop, flip; cross-entropy "
                    "ignoring 255 + L2 weight decay; momentum 0.9; poly learning rate.")
    parser.add_argument("--data", required=True, type=Path,
                        help="a VOC directory or DeepLab TFRecords")
    parser.add_argument("--out", required=True, type=Path, help="the RUN directory")
    parser.add_argument("--split", default="train")
    parser.add_argument("--resume", action="store_true",
                        help="continue RUN from its latest checkpoint (network from RUN)")
    parser.add_argument("--init", metavar="CKPT",
                        help="initial weights, e.g. the ImageNet checkpoint (head kept fresh)")
    group = parser.add_argument_group("network (recorded in RUN; not with --resume)")
    group.add_argument("--backbone", default=None, help=f"default {DEFAULT_BACKBONE}")
    group.add_argument("--output-stride", type=int, default=None, choices=OUTPUT_STRIDES,
                       help="default 16")
    group.add_argument("--num-classes", type=int, default=None, help="default 21")
    group.add_argument("--head", default=None, choices=HEADS, help="default logits")
    group.add_argument("--input-size", type=int, default=None,
                       help="serving input size recorded in RUN (default: the crop size)")
    recipe = parser.add_argument_group("recipe")
    recipe.add_argument("--steps", type=int, default=30000)
    recipe.add_argument("--batch-size", type=int, default=8, help="global batch")
    recipe.add_argument("--crop-size", type=int, default=513, help="32k+1")
    recipe.add_argument("--learning-rate", type=float, default=0.007)
    recipe.add_argument("--weight-decay", type=float, default=1e-4)
    recipe.add_argument("--fine-tune-batch-norm", action=argparse.BooleanOptionalAction,
                        default=True, help="train batch norm (off: frozen statistics)")
    recipe.add_argument("--min-scale", type=float, default=0.5)
    recipe.add_argument("--max-scale", type=float, default=2.0)
    recipe.add_argument("--scale-step", type=float, default=0.25)
    recipe.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True)
    recipe.add_argument("--seed", type=int, default=0)
    recipe.add_argument("--precision", choices=TRAIN_PRECISIONS, default="fp32",
                        help="compute dtype; fp16/bf16 need a GPU")
    run = parser.add_argument_group("run")
    run.add_argument("--strategy", choices=STRATEGIES, default="default",
                     help="mirrored: the GPUs of this node (or --cpu-devices); "
                          "multi-worker: the cluster in TF_CONFIG")
    run.add_argument("--cpu-devices", type=int, default=0,
                     help="split the CPU into N logical devices (to try mirrored on a CPU)")
    run.add_argument("--save-every", type=int, default=1000)
    run.add_argument("--log-every", type=int, default=10)
    run.add_argument("--image-every", type=int, default=200)
    run.add_argument("--eval-every", type=int, default=0,
                     help="measure val mIoU every N steps (0: never)")
    run.add_argument("--eval-split", default="val")
    run.add_argument("--no-progress", action="store_true")
    parser.set_defaults(run=cmd_train)


def _strategy(args: argparse.Namespace) -> Any:
    import tensorflow as tf

    if args.cpu_devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * args.cpu_devices)
    if args.strategy == "mirrored":
        if tf.config.list_physical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(cpus)
    if args.strategy == "multi-worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy multi-worker reads the cluster from TF_CONFIG, "
                             "which is not set")
        return tf.distribute.MultiWorkerMirroredStrategy()
    return None


def cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    from model.config import ModelConfig
    from model.train import evaluate, run
    from model.train.augment import AugmentConfig
    from model.train.trainer import TrainConfig, Trainer, TrainingDivergedError

    given = {f: getattr(args, f) for f in _MODEL_FLAGS if getattr(args, f) is not None}
    if args.resume:
        if given or args.init:
            flags = ", ".join("--" + f.replace("_", "-") for f in [*given, *(
                ["init"] if args.init else [])])
            raise ValueError(f"--resume takes the network from {args.out}; drop {flags}")
        config = run.read_config(args.out)
        config = dataclasses.replace(config, weight_decay=args.weight_decay)
    else:
        config = ModelConfig(**{"input_size": args.crop_size, **given,
                                "weight_decay": args.weight_decay})
    if args.precision != "fp32":
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            raise ValueError(f"--precision {args.precision} needs a GPU; none is visible")
    strategy = _strategy(args)
    train_config = TrainConfig(
        steps=args.steps, batch_size=args.batch_size,
        augment=AugmentConfig(crop_size=args.crop_size, min_scale=args.min_scale,
                              max_scale=args.max_scale, scale_step=args.scale_step,
                              flip=args.flip),
        learning_rate=args.learning_rate, fine_tune_batch_norm=args.fine_tune_batch_norm,
        save_every=args.save_every, log_every=args.log_every, image_every=args.image_every,
        eval_every=args.eval_every, seed=args.seed, precision=args.precision)
    trainer = Trainer(config, train_config, args.out, strategy=strategy)

    def val_miou() -> float:
        live = evaluate.LiveSegmenter(trainer.module)
        return evaluate.evaluate(live, args.data, args.eval_split, config.num_classes,
                                 batch_size=8).confusion.miou()

    try:
        result = trainer.train(args.data, split=args.split, init=args.init, resume=args.resume,
                               progress=not args.no_progress,
                               evaluate=val_miou if args.eval_every else None)
    except TrainingDivergedError as e:
        print(f"atrous train: {e}", file=sys.stderr)
        return 1
    how = "stopped by a signal" if result.stopped == "signal" else "finished"
    print(f"{how} at step {result.step}, loss {result.loss:.4f}; checkpoint "
          f"{result.checkpoint}; export with: atrous export --checkpoint {args.out} --out DIR")
    return 130 if result.stopped == "signal" else 0


# -- atrous eval --------------------------------------------------------------------------


def add_eval_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "eval", help="mIoU, per-class IoU and pixel accuracy of a RUN or SavedModel",
        description="Single scale runs the exported SavedModel through the server's own "
                    "pipeline; several --scales and/or --flip average probabilities "
                    "(DeepLab's eval) and need a checkpoint or RUN.")
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--checkpoint", required=True,
                        help="a RUN directory, a checkpoint (with the network flags of "
                             "`atrous export`) or a SavedModel directory")
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
    group = parser.add_argument_group("network (for a bare checkpoint; a RUN records it)")
    group.add_argument("--backbone", default=None)
    group.add_argument("--output-stride", type=int, default=None, choices=OUTPUT_STRIDES)
    group.add_argument("--num-classes", type=int, default=None)
    group.add_argument("--head", default=None, choices=HEADS)
    group.add_argument("--input-size", type=int, default=None)
    parser.set_defaults(run=cmd_eval)


def checkpoint_config(checkpoint: str | Path, args: argparse.Namespace) -> Any:
    """The network of a RUN (its record) or of a bare checkpoint (the flags)."""
    from model.checkpoints import run_config
    from model.config import ModelConfig

    given = {f: getattr(args, f) for f in _MODEL_FLAGS if getattr(args, f, None) is not None}
    recorded = run_config(checkpoint)
    if recorded is None:
        return ModelConfig(**given)
    import dataclasses

    # A RUN fixes the network; only the serving input size may be changed.
    others = sorted(set(given) - {"input_size"})
    if others:
        flags = ", ".join("--" + f.replace("_", "-") for f in others)
        raise ValueError(f"{checkpoint} is a training run that records its network; drop {flags}")
    return dataclasses.replace(recorded, **given)


def cmd_eval(args: argparse.Namespace) -> int:
    from app.settings import Settings
    from model.serving import ModelMetadata
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
        config = checkpoint_config(args.checkpoint, args)
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
    from model.runner import SavedModelRunner

    return SavedModelRunner(path)


# -- atrous data --------------------------------------------------------------------------


def add_data_parser(commands: Any) -> None:
    parser = commands.add_parser("data", help="make or convert training data")
    actions = parser.add_subparsers(dest="action", required=True)
    synthetic = actions.add_parser(
        "synthetic", help="write a synthetic VOC-format dataset (tests, demos, benchmarks)")
    synthetic.add_argument("out", type=Path)
    synthetic.add_argument("--train", type=int, default=200, help="training images")
    synthetic.add_argument("--val", type=int, default=50, help="held-out images")
    synthetic.add_argument("--size", type=int, default=128, help="longer side in pixels")
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.set_defaults(run=cmd_data_synthetic)
    convert = actions.add_parser("voc-to-tfrecord",
                                 help="convert a VOC directory into DeepLab TFRecords")
    convert.add_argument("voc", type=Path, help="the VOC directory (VOC2012/)")
    convert.add_argument("out", type=Path, help="directory for <split>-*.tfrecord")
    convert.add_argument("--splits", default="train,val")
    convert.add_argument("--num-classes", type=int, default=21)
    convert.add_argument("--shards", type=int, default=4)
    convert.set_defaults(run=cmd_data_voc_to_tfrecord)


def cmd_data_synthetic(args: argparse.Namespace) -> int:
    from model.train.synthetic import write_dataset

    out = write_dataset(args.out, train=args.train, val=args.val, size=args.size,
                        seed=args.seed)
    print(f"wrote {args.train} train + {args.val} val scenes to {out}")
    return 0


def cmd_data_voc_to_tfrecord(args: argparse.Namespace) -> int:
    from model.train.data import write_tfrecords

    splits = [s for s in args.splits.split(",") if s]
    files = write_tfrecords(args.voc, args.out, splits=splits, num_classes=args.num_classes,
                            num_shards=args.shards)
    for path in files:
        print(path)
    return 0
