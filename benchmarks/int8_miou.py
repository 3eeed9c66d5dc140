"""INT8 and bf16 accuracy on a trained model: mIoU and label agreement of every export format
and inference precision on the synthetic val split, rerunnable.

    python benchmarks/int8_miou.py [--work DIR] [--steps 1000] [--run RUN] [--precision]

1. ``atrous data synthetic`` with the training demo's sizes and seed (400 train, 60 val,
   128 px, seed 0);
2. ``atrous train`` with the demo's recipe (``benchmarks/train_demo.py``: cifar_resnet_20,
   OS8, crop 129, batch 8, learning rate 0.03), or ``--run RUN``: an existing RUN trained
   on that data (its ``atrous_run.json`` and checkpoint are checked, not trusted);
3. ``atrous export``: the fp32 SavedModel from the RUN, then OpenVINO IR and ONNX from that
   SavedModel at fp32 and at INT8, calibrated on the *train* split (``--calibration`` on a
   VOC directory reads ``train.txt`` only; val is never seen);
4. ``atrous eval`` of each export on the val split through its runtime and inference
   precision (OpenVINO pinned to fp32, and in bf16 where the CPU has bf16 units), with
   ``--save-predictions``; then the pixel agreement of each export's masks with the fp32
   SavedModel's, over every pixel of the val images at their original size.

``--precision`` leaves the ONNX exports out (the inference-precision comparison alone).

Writes ``benchmarks/int8_miou_cpu.json``.  Everything goes through the ``atrous`` command.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA_ARGS = ("--train", "400", "--val", "60", "--size", "128", "--seed", "0")
# (name, export directory, runtime); the precision is read back from each export.
EXPORTS = [
    ("savedmodel fp32", "savedmodel", "tensorflow"),
    ("openvino fp32", "openvino", "openvino"),
    ("onnx fp32", "onnx", "onnxruntime"),
    ("openvino int8 (NNCF)", "openvino-int8", "openvino"),
    ("onnx int8 (QDQ)", "onnx-int8", "onnxruntime"),
    ("onnx int8 (QDQ) on openvino", "onnx-int8", "openvino"),
    ("openvino bf16 on savedmodel", "savedmodel", "openvino"),
    ("openvino int8 (NNCF) + bf16", "openvino-int8", "openvino"),
]
REFERENCE = EXPORTS[0][0]
# The issues' bars: INT8 (issue 12, "Correctness"), bf16 (issue 18, the accuracy budget).
MIN_AGREEMENT, MAX_MIOU_LOSS = 0.98, 0.01
BF16_MAX_MIOU_LOSS = 0.003


def atrous(*args: str) -> None:
    print("$ atrous", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "app.cli", *args], check=True, cwd=REPO,
                   env={**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"})


def train(data: Path, run: Path, steps: int) -> None:
    """The training demo's recipe (benchmarks/train_demo.py), verbatim but for the steps."""
    shutil.rmtree(run, ignore_errors=True)
    atrous("train", "--data", str(data), "--out", str(run), "--backbone", "cifar_resnet_20",
           "--output-stride", "8", "--crop-size", "129", "--batch-size", "8",
           "--steps", str(steps), "--learning-rate", "0.03", "--eval-every", "100",
           "--save-every", "250", "--log-every", "20", "--no-progress")


def check_run(run: Path) -> dict:
    """An existing RUN, checked: its record parses and names the demo's network, and its
    latest checkpoint reads."""
    import tensorflow as tf

    from model import checkpoints

    config = checkpoints.run_config(run)
    if config is None:
        raise SystemExit(f"{run} is not a training RUN (no atrous_run.json)")
    if (config.backbone, config.output_stride) != ("cifar_resnet_20", 8):
        raise SystemExit(f"{run} is not the demo's network: {config}")
    latest = tf.train.latest_checkpoint(str(run))
    if latest is None:
        raise SystemExit(f"{run} has no checkpoint")
    variables = tf.train.list_variables(latest)  # raises on a truncated checkpoint
    record = json.loads((run / "atrous_run.json").read_text())
    return {"run": str(run), "checkpoint": Path(latest).name, "variables": len(variables),
            "training": record["training"]}


def cpu() -> dict:
    info = {"model_name": "unknown", "flags": []}
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            key, _, value = line.partition(":")
            if key == "Model name":
                info["model_name"] = value.strip()
            elif key == "Flags":
                flags = set(value.split())
                info["flags"] = sorted(flags & {"avx2", "fma", "avx512f", "avx512_vnni",
                                                "avx_vnni", "amx_int8", "avx512_bf16",
                                                "amx_bf16"})
    except OSError:
        pass
    return {**info, "cores": os.cpu_count()}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for package in ("tensorflow", "openvino", "nncf", "onnxruntime", "onnx", "tf2onnx"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def agreement(predictions: Path, reference: Path,
              names: list[tuple[str, np.ndarray]]) -> dict:
    """Share of pixels whose label equals the reference's: all pixels, and the pixels the
    ground truth does not ignore (255)."""
    same = total = same_scored = scored = 0
    for name, truth in names:
        a = np.asarray(Image.open(predictions / f"{name}.png"))
        b = np.asarray(Image.open(reference / f"{name}.png"))
        same += int((a == b).sum())
        total += a.size
        keep = truth != 255
        same_scored += int((a == b)[keep].sum())
        scored += int(keep.sum())
    return {"all_pixels": same / total, "scored_pixels": same_scored / scored}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/atrous-int8-miou"))
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--run", type=Path, help="reuse this trained RUN (the demo's recipe "
                        "on the same data) instead of training")
    parser.add_argument("--json", type=Path, default=HERE / "int8_miou_cpu.json")
    parser.add_argument("--precision", action="store_true",
                        help="no ONNX exports: the inference-precision comparison alone")
    args = parser.parse_args()
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    load_before = os.getloadavg()
    started = time.time()
    data = work / "synthetic"
    atrous("data", "synthetic", str(data), *DATA_ARGS)
    if args.run:
        run = args.run
        trained = {"reused": True, **check_run(run)}
    else:
        run = work / "run"
        train(data, run, args.steps)
        trained = {"reused": False, **check_run(run),
                   "wall_seconds_data_and_training": round(time.time() - started, 1)}
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    trained["val_miou_curve"] = [(h["step"], round(h["miou"], 4)) for h in history
                                 if "miou" in h]

    exports = work / "exports"
    atrous("export", "--checkpoint", str(run), "--out", str(exports / "savedmodel"))
    for format in ("openvino",) if args.precision else ("openvino", "onnx"):
        atrous("export", "--model", str(exports / "savedmodel"), "--format", format,
               "--out", str(exports / format))
        atrous("export", "--model", str(exports / "savedmodel"), "--format", format,
               "--int8", "--calibration", str(data), "--out", str(exports / f"{format}-int8"))

    from model.convert import calibration_files
    from model.train.data import load_examples

    truths = [(name, label) for name, _, label in load_examples(data, "val", 21)]
    calibrated = {path.stem for path in calibration_files(data)}
    if calibrated & {name for name, _ in truths}:
        raise SystemExit("calibration saw val images")  # never: --calibration reads train.txt
    from model.inference.precision import bf16_units

    rows = []
    for name, directory, runtime in EXPORTS:
        if "bf16" in name and not bf16_units():
            continue  # refused on a CPU without bf16 units
        if not (exports / directory).exists():
            continue  # --precision: no ONNX exports
        slug = name.replace(" ", "-").replace("(", "").replace(")", "")
        predictions, report = work / "predictions" / slug, work / "eval" / f"{slug}.json"
        precision = "bf16" if "bf16" in name else "fp32"  # auto would take bf16 where it can
        atrous("eval", "--data", str(data), "--split", "val", "--checkpoint",
               str(exports / directory), "--runtime", runtime,
               "--inference-precision", precision,
               "--save-predictions", str(predictions), "--json", str(report))
        metrics = json.loads(report.read_text())
        rows.append({"export": name, "directory": directory, "runtime": runtime,
                     "precision": metrics["model"]["precision"],
                     "inference_precision": metrics["model"]["inference_precision"],
                     "runtime_version": metrics["model"]["runtime_version"],
                     "miou": metrics["miou"], "pixel_accuracy": metrics["pixel_accuracy"],
                     "predictions": predictions})
    reference = rows[0]
    # The training demo's bar: a model worth quantizing, not one whose logits nearly tie.
    trained["fp32_val_miou_at_least_0.8"] = reference["miou"] >= 0.8
    for row in rows:
        row["agreement_with_savedmodel_fp32"] = agreement(row.pop("predictions"),
                                                          work / "predictions" / "savedmodel-fp32",
                                                          truths)
        row["miou_points_lost"] = round(100 * (reference["miou"] - row["miou"]), 3)
        if row["inference_precision"] == "bf16" and row["precision"] != "int8":
            row["meets_bf16_budget"] = reference["miou"] - row["miou"] <= BF16_MAX_MIOU_LOSS
        if row["precision"] == "int8":
            row["meets_issue_bar"] = (
                row["agreement_with_savedmodel_fp32"]["all_pixels"] >= MIN_AGREEMENT
                and reference["miou"] - row["miou"] <= MAX_MIOU_LOSS)
    results = {
        "command": "python benchmarks/int8_miou.py" + (f" --run {args.run}" if args.run else "")
                   + (" --precision" if args.precision else ""),
        "machine": {"cpu": cpu(), "load_average_before": load_before,
                    "load_average_after": os.getloadavg()},
        "versions": versions(),
        "data": "atrous data synthetic " + " ".join(DATA_ARGS),
        "calibration": {"images": len(calibrated), "val_images_among_them": 0,
                        "how": "atrous export --calibration DIR on the VOC directory: images "
                               "spread over ImageSets/Segmentation/train.txt"},
        "evaluated": f"val split, {len(truths)} images, single scale",
        "model": trained,
        "bar": {"min_agreement": MIN_AGREEMENT, "max_miou_points_lost": 100 * MAX_MIOU_LOSS,
                "bf16_max_miou_points_lost": 100 * BF16_MAX_MIOU_LOSS},
        "results": rows,
        "wall_seconds": round(time.time() - started, 1),
    }
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    for row in rows:
        print(f"{row['export']:30s} {row['runtime']:12s} {row['inference_precision']:5s} "
              f"mIoU {row['miou']:.4f} "
              f"pixel acc {row['pixel_accuracy']:.4f} agreement "
              f"{row['agreement_with_savedmodel_fp32']['all_pixels']:.4f} "
              f"lost {row['miou_points_lost']:+.3f} pt")


if __name__ == "__main__":
    main()
