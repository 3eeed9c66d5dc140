"""The training demonstration, rerunnable: synthetic VOC data -> a small backbone trained
on the CPU -> held-out mIoU, plus training throughput for the small backbone and for
ResNet-101 at a 321 crop.

    python benchmarks/train_demo.py [--work DIR] [--steps 1000] [--skip-resnet101]

Writes ``benchmarks/train_demo_cpu.json`` (figures, machine, load) and
``benchmarks/train_demo_curves.png`` (the RUN's loss / mIoU curves).  Everything goes
through the ``atrous`` command, as a user would run it.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ATROUS = [sys.executable, "-m", "app.cli"]


def atrous(*args: str) -> None:
    print("$ atrous", " ".join(args), flush=True)
    subprocess.run([*ATROUS, *args], check=True, cwd=HERE.parent,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


def history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def cpu_name() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def throughput(data: Path, run: Path, backbone: str, crop: int, batch: int, steps: int,
               log_every: int, extra: tuple[str, ...] = ()) -> float:
    """Training images/s over the last logged window (after tracing and warm-up)."""
    shutil.rmtree(run, ignore_errors=True)
    atrous("train", "--data", str(data), "--out", str(run), "--backbone", backbone,
           "--crop-size", str(crop), "--batch-size", str(batch), "--steps", str(steps),
           "--log-every", str(log_every), "--save-every", str(steps), "--no-progress", *extra)
    return float(history(run)[-1]["images_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/atrous-train-demo"))
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--skip-resnet101", action="store_true")
    args = parser.parse_args()
    work = args.work
    data, run = work / "synthetic", work / "run"
    shutil.rmtree(work, ignore_errors=True)
    load_before = os.getloadavg()[0]
    started = time.time()
    atrous("data", "synthetic", str(data), "--train", "400", "--val", "60", "--size", "128",
           "--seed", "0")
    atrous("train", "--data", str(data), "--out", str(run), "--backbone", "cifar_resnet_20",
           "--output-stride", "8", "--crop-size", "129", "--batch-size", "8",
           "--steps", str(args.steps), "--learning-rate", "0.03", "--eval-every", "100",
           "--save-every", "250", "--log-every", "20", "--no-progress")
    train_seconds = time.time() - started
    atrous("eval", "--data", str(data), "--checkpoint", str(run), "--cache-dir",
           str(work / "cache"), "--json", str(work / "eval.json"))
    final = json.loads((work / "eval.json").read_text())
    curve = history(run)
    first_08 = next((h for h in curve if h.get("miou", 0) >= 0.8), None)
    results = {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                    "load_average_before": load_before,
                    "load_average_after": os.getloadavg()[0]},
        "demo": {
            "command": "benchmarks/train_demo.py",
            "backbone": "cifar_resnet_20", "output_stride": 8, "crop": 129, "batch": 8,
            "steps": args.steps, "learning_rate": 0.03,
            "data": "atrous data synthetic --train 400 --val 60 --size 128 --seed 0",
            "wall_seconds_data_and_training": round(train_seconds, 1),
            "val_miou": final["miou"], "val_pixel_accuracy": final["pixel_accuracy"],
            "first_step_at_or_above_0.8_miou": first_08 and first_08["step"],
            # wall time from the start of this script (data generation and imports included)
            "seconds_to_0.8_miou": first_08 and round(first_08["time"] - started, 1),
            "miou_curve": [(h["step"], round(h["miou"], 4)) for h in curve if "miou" in h],
        },
        "throughput_images_per_s": {
            "cifar_resnet_20 crop 129 batch 8 (demo run, last window)":
                round(float(curve[-1].get("images_per_s") or 0.0), 2),
        },
    }
    shutil.copy(run / "curves.png", HERE / "train_demo_curves.png")
    if not args.skip_resnet101:
        results["throughput_images_per_s"]["resnet_v1_101 OS16 crop 321 batch 2"] = round(
            throughput(data, work / "r101", "resnet_v1_101", 321, 2, 6, 3), 3)
    (HERE / "train_demo_cpu.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
