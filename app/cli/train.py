"""atrous train: DeepLab's recipe into a RUN directory (checkpoints, record, summaries)."""

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from app.cli.options import MODEL_FLAGS
from model.config import DEFAULT_BACKBONE, HEADS, OUTPUT_STRIDES, PRECISIONS

STRATEGIES = ("default", "mirrored", "multi-worker")


def add_parser(commands: argparse._SubParsersAction) -> None:
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
    group.add_argument("--precision", choices=PRECISIONS, default=None,
                       help="compute dtype (default fp32); fp16/bf16 train in mixed "
                            "precision: float32 weights and updates, fp16 with loss scaling")
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
    running = parser.add_argument_group("run")
    running.add_argument("--strategy", choices=STRATEGIES, default="default",
                     help="mirrored: the GPUs of this node (or --cpu-devices); "
                          "multi-worker: the cluster in TF_CONFIG")
    running.add_argument("--cpu-devices", type=int, default=0,
                     help="split the CPU into N logical devices (to try mirrored on a CPU)")
    running.add_argument("--save-every", type=int, default=1000)
    running.add_argument("--log-every", type=int, default=10)
    running.add_argument("--image-every", type=int, default=200)
    running.add_argument("--eval-every", type=int, default=0,
                     help="measure val mIoU every N steps (0: never)")
    running.add_argument("--eval-split", default="val")
    running.add_argument("--no-progress", action="store_true")
    parser.set_defaults(run=run)


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


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from model.config import ModelConfig
    from model.train import evaluate
    from model.train import run as run_dir
    from model.train.augment import AugmentConfig
    from model.train.trainer import TrainConfig, Trainer, TrainingDivergedError

    given = {f: getattr(args, f) for f in MODEL_FLAGS if getattr(args, f) is not None}
    if args.resume:
        if given or args.init:
            flags = ", ".join("--" + f.replace("_", "-") for f in [*given, *(
                ["init"] if args.init else [])])
            raise ValueError(f"--resume takes the network from {args.out}; drop {flags}")
        config = run_dir.read_config(args.out)
        config = dataclasses.replace(config, weight_decay=args.weight_decay)
    else:
        config = ModelConfig(**{"input_size": args.crop_size, **given,
                                "weight_decay": args.weight_decay})
    strategy = _strategy(args)
    train_config = TrainConfig(
        steps=args.steps, batch_size=args.batch_size,
        augment=AugmentConfig(crop_size=args.crop_size, min_scale=args.min_scale,
                              max_scale=args.max_scale, scale_step=args.scale_step,
                              flip=args.flip),
        learning_rate=args.learning_rate, fine_tune_batch_norm=args.fine_tune_batch_norm,
        save_every=args.save_every, log_every=args.log_every, image_every=args.image_every,
        eval_every=args.eval_every, seed=args.seed)
    trainer = Trainer(config, train_config, args.out, strategy=strategy)

    live: list[evaluate.LiveSegmenter] = []  # built once: its graph is traced once

    def val_miou() -> float:
        if not live:
            live.append(evaluate.LiveSegmenter(trainer.module))
        return evaluate.evaluate(live[0], args.data, args.eval_split, config.num_classes,
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


