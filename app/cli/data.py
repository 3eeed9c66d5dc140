"""atrous data: write a synthetic VOC dataset, convert VOC to DeepLab TFRecords."""

import argparse
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction) -> None:
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
