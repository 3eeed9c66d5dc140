"""Bulk segmentation throughput: ``segment-dataset --engine ray`` vs ``--engine local`` vs
``atrous segment``, on the same few hundred 640x480 JPEGs, each a fresh process.

Measured per engine (the whole command, process start to exit, as a user waits for it):

* ``wall_s`` and ``images_per_s`` over the wall time;
* from ``DST/_summary.json``: the job's own seconds (model loading included) and Ray's
  start-up (``startup_seconds``: ``ray.init`` of a local Ray);
* ``segment``: one ``atrous segment IMAGES... -o OUT`` process over all the images (its own
  loop), and ``segment-per-image``: one process per image on ``--loop-sample`` images (a
  shell loop of ``atrous segment``), extrapolated as images/s.

Rounds alternate the engines (and reverse their order every other round) so that drifting
machine load hits them alike; ``ray_over_local`` is the ratio of the mean images/s, and
``ray_over_local_by_round`` each round's own.  The JSON goes to ``--json`` (by default
``benchmarks/batch_bench_<backbone>_<images>.json``).

Usage::

    python benchmarks/batch_bench.py                  # ResNet-101, 300 images, 2 rounds
    python benchmarks/batch_bench.py --engines ray,local --images 200 --rounds 4
    python benchmarks/batch_bench.py --backbone cifar_resnet_20 --input-size 129 --images 64

Target (issue 16): on one 2-core machine the Ray engine reaches >= 0.9x the local engine's
throughput at ResNet-101; report Ray's start-up cost.
"""

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import server_bench  # noqa: E402  (its cached export of --backbone)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="exported model (default: export one)")
    parser.add_argument("--backbone", default="resnet_v1_101")
    parser.add_argument("--output-stride", type=int, default=16)
    parser.add_argument("--input-size", type=int, default=513)
    parser.add_argument("--cache-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "atrous-bench-cache")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1, help="Ray actors")
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--engines", default="ray,local,segment,segment-per-image")
    parser.add_argument("--loop-sample", type=int, default=3,
                        help="images for the one-process-per-image loop")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path,
                        help="write the results here [default: "
                             "benchmarks/batch_bench_<backbone>_<images>.json]")
    return parser.parse_args()


def make_images(folder: Path, count: int, width: int, height: int) -> list[Path]:
    """Photo-like JPEGs: gradients, noise and shapes (no two alike)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        rng = np.random.default_rng(i)
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(image)
        for _ in range(5):
            x, y = int(rng.integers(0, width - 50)), int(rng.integers(0, height - 50))
            draw.ellipse((x, y, x + 50 + int(rng.integers(0, 200)),
                          y + 50 + int(rng.integers(0, 150))),
                         fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        path = folder / f"{i:05d}.jpg"
        path.write_bytes(buffer.getvalue())
        paths.append(path)
    return paths


def timed(command: list[str]) -> float:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "RAY_USAGE_STATS_ENABLED": "0"}
    start = time.monotonic()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:6])}... exited {done.returncode}:\n"
                         f"{done.stderr[-3000:]}")
    return wall


def run_engine(engine: str, args: argparse.Namespace, model: Path, images: list[Path],
               work: Path) -> dict[str, object]:
    atrous = [sys.executable, "-m", "app.cli"]
    out = work / f"out-{engine}"
    shutil.rmtree(out, ignore_errors=True)
    common = ["--model", str(model), "--batch-size", str(args.batch_size),
              "--runtime", args.runtime]
    if engine in ("ray", "local"):
        wall = timed([*atrous, "segment-dataset", str(images[0].parent), str(out),
                      "--engine", engine, "--workers", str(args.workers), "--no-progress",
                      *common])
        summary = json.loads((out / "_summary.json").read_text())
        assert summary["ok"] == len(images), summary
        return {"engine": engine, "images": len(images), "wall_s": round(wall, 2),
                "images_per_s": round(len(images) / wall, 3),
                "job_s": summary["seconds"], "startup_s": summary["startup_seconds"]}
    if engine == "segment":
        wall = timed([*atrous, "segment", *map(str, images), "-o", str(out), *common])
        return {"engine": engine, "images": len(images), "wall_s": round(wall, 2),
                "images_per_s": round(len(images) / wall, 3)}
    sample = images[:args.loop_sample]
    walls = [timed([*atrous, "segment", str(path), "-o", str(out), *common])
             for path in sample]
    return {"engine": engine, "images": len(sample), "wall_s": round(sum(walls), 2),
            "images_per_s": round(len(sample) / sum(walls), 3),
            "per_process_s": round(statistics.fmean(walls), 2)}


def machine() -> dict[str, object]:
    name = "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                name = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": name, "cores": os.cpu_count(), "python": platform.python_version(),
            "load_average_at_start": os.getloadavg()}


def main() -> None:
    args = parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    model = Path(server_bench.saved_model(args))  # the same cached export
    host = machine()
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="atrous-batch-bench-") as tmp:
        work = Path(tmp)
        images = make_images(work / "images", args.images, width, height)
        engines = args.engines.split(",")
        for round_index in range(args.rounds):
            order = engines if round_index % 2 == 0 else engines[::-1]
            for engine in order:
                result = {"round": round_index, **run_engine(engine, args, model, images, work)}
                print(json.dumps(result), flush=True)
                results.append(result)
    by_engine: dict[str, list[float]] = {}
    for r in results:
        by_engine.setdefault(str(r["engine"]), []).append(float(r["images_per_s"]))  # type: ignore[arg-type]
    means = {engine: statistics.fmean(values) for engine, values in by_engine.items()}
    report = {"machine": host, "model": str(model), "backbone": args.backbone,
              "input_size": args.input_size, "images": args.images, "size": args.size,
              "batch_size": args.batch_size, "workers": args.workers, "results": results,
              "mean_images_per_s": {k: round(v, 3) for k, v in means.items()}}
    if "ray" in means and "local" in means:
        report["ray_over_local"] = round(means["ray"] / means["local"], 3)
        per_round = {(r["round"], r["engine"]): float(r["images_per_s"])  # type: ignore[arg-type]
                     for r in results}
        report["ray_over_local_by_round"] = [
            round(per_round[(i, "ray")] / per_round[(i, "local")], 3)
            for i in range(args.rounds)]
    report["load_average_at_end"] = os.getloadavg()
    print(json.dumps({k: v for k, v in report.items() if k != "results"}, indent=2))
    out = args.json or REPO / "benchmarks" / f"batch_bench_{args.backbone}_{args.images}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
