"""Runtimes side by side: bare-model s/image, then the server end to end, in one run.

Exports (with ``atrous export``, random weights: speed does not depend on them) ResNet-101
OS16 513 as a SavedModel, OpenVINO IR and ONNX, at fp32 and INT8 (calibrated on synthetic
images), into ``--work``; reuses what is already there.  Then:

* bare: every (runtime, format, export precision, inference precision) loaded in this
  process and timed at batch 1 and 4, in interleaved rounds (each round runs every
  configuration once), so that load from elsewhere on the machine hits all of them alike;
  the bf16 configurations only where the CPU has bf16 units;
* server: real servers (``python -m app``) with the default settings, one per
  configuration: TensorFlow runtime on the SavedModel, the default runtime and inference
  precision (``auto``) on the SavedModel, OpenVINO pinned to fp32, and the default on the
  INT8 exports; concurrency 1 and 4 of 640x480 JPEG -> PNG mask requests, interleaved
  rounds; throughput as a ratio to the TensorFlow server's, and to the bare model's at
  batch 1 (how much of the model's speed the server delivers).

``--precision`` keeps what the inference-precision comparison needs (TensorFlow, OpenVINO
fp32 / bf16 / INT8; no ONNX exports).

Usage::

    python benchmarks/runtimes_bench.py --json benchmarks/runtimes_resnet101_cpu.json
    python benchmarks/runtimes_bench.py --precision --json benchmarks/precision_resnet101_cpu.json
    python benchmarks/runtimes_bench.py --quick --backbone cifar_resnet_20 --input-size 65
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import server_bench  # noqa: E402  (the server half reuses its client and machine report)

# (name, runtime, format, int8, inference precision); bf16 ones run only on a bf16 CPU.
CONFIGS = [
    ("tensorflow fp32", "tensorflow", "savedmodel", False, "auto"),
    ("openvino on savedmodel fp32", "openvino", "savedmodel", False, "fp32"),
    ("openvino on savedmodel bf16", "openvino", "savedmodel", False, "bf16"),
    ("openvino fp32", "openvino", "openvino", False, "fp32"),
    ("onnxruntime fp32", "onnxruntime", "onnx", False, "auto"),
    ("openvino on onnx fp32", "openvino", "onnx", False, "fp32"),
    ("openvino int8 (NNCF)", "openvino", "openvino", True, "fp32"),
    ("openvino int8 (NNCF) + bf16", "openvino", "openvino", True, "bf16"),
    ("onnxruntime int8 (QDQ)", "onnxruntime", "onnx", True, "auto"),
    ("openvino on onnx int8 (QDQ)", "openvino", "onnx", True, "fp32"),
]
PRECISION_CONFIGS = ("tensorflow fp32", "openvino on savedmodel fp32",
                     "openvino on savedmodel bf16", "openvino int8 (NNCF)",
                     "openvino int8 (NNCF) + bf16")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path,
                        default=Path(tempfile.gettempdir()) / "atrous-runtimes-bench")
    parser.add_argument("--backbone", default="resnet_v1_101")
    parser.add_argument("--input-size", type=int, default=513)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=2, help="timed calls per round")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--requests", type=int, default=8,
                        help="server requests per round and concurrency level")
    parser.add_argument("--skip-bare", action="store_true")
    parser.add_argument("--skip-server", action="store_true")
    parser.add_argument("--fp32-servers-only", action="store_true",
                        help="only the TensorFlow and the default server (the fp32 A/B)")
    parser.add_argument("--precision", action="store_true",
                        help="only TensorFlow and OpenVINO fp32 / bf16 / INT8 (no ONNX)")
    parser.add_argument("--quick", action="store_true", help="1 round, fewer calls (smoke run)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args()


def atrous(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=REPO, check=True,
                   env={**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"})


def calibration_images(folder: Path, count: int = 16) -> Path:
    """Blocky synthetic images (flat colour rectangles, like the training issue's data)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        image = np.full((360, 480, 3), rng.integers(0, 256, 3), np.uint8)
        for _ in range(6):
            y, x = rng.integers(0, 300), rng.integers(0, 400)
            image[y:y + rng.integers(20, 200), x:x + rng.integers(20, 250)] = rng.integers(0, 256,
                                                                                          3)
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return folder


def configs(args: argparse.Namespace) -> list[tuple[str, str, str, bool, str]]:
    """The bare configurations this run times: ``--precision``'s, and bf16 only on a CPU
    with bf16 units (elsewhere it is refused)."""
    from model.inference.precision import bf16_units

    chosen = [c for c in CONFIGS if not args.precision or c[0] in PRECISION_CONFIGS]
    return [c for c in chosen if c[4] != "bf16" or bf16_units()]


def exports(args: argparse.Namespace) -> dict[tuple[str, bool], Path]:
    """The model directory per (format, int8), exported once into ``args.work``."""
    work = args.work
    saved = work / "savedmodel"
    if not saved.exists():
        atrous("export", "--backbone", args.backbone, "--input-size", str(args.input_size),
               "--out", str(saved))
    calibration = calibration_images(work / "calibration")
    paths = {("savedmodel", False): saved}
    for format in ("openvino",) if args.precision else ("openvino", "onnx"):
        for int8 in (False, True):
            out = work / (format + ("-int8" if int8 else ""))
            if not out.exists():
                extra = ["--int8", "--calibration", str(calibration)] if int8 else []
                atrous("export", "--model", str(saved), "--format", format,
                       "--out", str(out), *extra)
            paths[(format, int8)] = out
    return paths


def bench_bare(args: argparse.Namespace, paths: dict[tuple[str, bool], Path]) -> list[dict]:
    from model.inference import timing
    from model.inference.runtimes import load_runtime

    loaded = []
    for name, runtime, format, int8, precision in configs(args):
        segmenter = load_runtime(paths[(format, int8)], runtime,
                                 warmup_batch_sizes=args.batch_sizes,
                                 inference_precision=precision)
        loaded.append((name, segmenter))
        print(f"loaded {name}: {segmenter.runtime} {segmenter.runtime_version} "
              f"on {segmenter.device}, {segmenter.inference_precision.reason}", flush=True)
    batches = {b: timing.random_batch(b, args.input_size) for b in args.batch_sizes}
    durations: dict[tuple[str, int], list[float]] = {}
    for round_ in range(args.rounds):
        for batch in args.batch_sizes:
            for name, segmenter in loaded:
                time.sleep(0.3)  # let the previous runtime's spinning threads go idle
                durations.setdefault((name, batch), []).extend(timing.time_calls(
                    segmenter, *batches[batch], num_batches=args.calls, burn_in=0))
        print(f"round {round_ + 1}/{args.rounds} done; load {os.getloadavg()}", flush=True)
    rows = []
    reference = {b: statistics.fmean(durations[("tensorflow fp32", b)]) for b in args.batch_sizes}
    for batch in args.batch_sizes:
        for name, segmenter in loaded:
            result = timing.summarise(segmenter, batch, durations[(name, batch)])
            rows.append({"config": name, "runtime": result.runtime,
                         "runtime_version": result.runtime_version, "format": result.format,
                         "precision": result.precision,
                         "inference_precision": segmenter.inference_precision.name,
                         "batch": batch,
                         "s_per_batch": round(result.mean_s, 4), "sd_s": round(result.sd_s, 4),
                         "s_per_image": round(result.s_per_image, 4),
                         "images_per_s": round(result.images_per_s, 3),
                         "speedup_vs_tensorflow": round(reference[batch] / result.mean_s, 3),
                         "calls": result.num_batches})
    return rows


def start_server(path: Path, runtime: str, precision: str,
                 log: Path) -> tuple[subprocess.Popen, str]:
    return server_bench.launch_server(path, log, {
        "ATROUS_RUNTIME": runtime, "ATROUS_INFERENCE_PRECISION": precision,
        "ATROUS_MAX_QUEUE": "64", "PYTHONPATH": str(REPO)})


def bench_servers(args: argparse.Namespace, paths: dict[tuple[str, bool], Path],
                  bare: list[dict]) -> dict:
    import httpx

    # The TensorFlow-runtime server, then the default runtime and inference precision
    # (auto) on the default export (the SavedModel), OpenVINO pinned to fp32, and the
    # default on each INT8 export; with the bare configuration each one runs.
    saved = paths[("savedmodel", False)]
    servers = [("tensorflow server (SavedModel fp32)", saved, "tensorflow", "auto"),
               ("default server (SavedModel)", saved, "auto", "auto"),
               ("openvino fp32 server (SavedModel)", saved, "openvino", "fp32"),
               ("default server (OpenVINO int8 export)", paths[("openvino", True)], "auto",
                "auto")]
    if not args.precision:
        servers.append(("default server (ONNX int8 export)", paths[("onnx", True)], "auto",
                        "auto"))
    if args.fp32_servers_only:
        servers = servers[:3:2]
    logs = Path(tempfile.mkdtemp(prefix="atrous-runtimes-bench-"))
    started = []
    try:
        for i, (name, path, runtime, precision) in enumerate(servers):
            process, url = start_server(path, runtime, precision, logs / f"server-{i}.log")
            info = httpx.get(url + "/v1/model").json()
            started.append((name, process, url, info))
            print(f"started {name}: {info['runtime']} {info['runtime_version']}, "
                  f"{info['inference_precision_reason']}, "
                  f"max batch {info['batching']['max_batch_size']}", flush=True)
        body = server_bench.test_image()
        rounds: dict[tuple[str, int], list[dict]] = {}
        for round_ in range(args.rounds):
            for concurrency in args.concurrency:
                for name, _, url, _ in started:
                    time.sleep(0.3)
                    result = asyncio.run(server_bench.bench_server(
                        url, body, concurrency, max(concurrency, args.requests)))
                    rounds.setdefault((name, concurrency), []).append(result)
            print(f"server round {round_ + 1}/{args.rounds} done; load {os.getloadavg()}",
                  flush=True)
    finally:
        for _, process, _, _ in started:
            process.terminate()
            process.wait(60)
    levels = []
    for concurrency in args.concurrency:
        pooled = {name: server_bench.pool(rounds[(name, concurrency)])
                  for name, _, _, _ in started}
        reference = pooled[servers[0][0]]["throughput_ips"]
        for name, _, _, info in started:
            throughput = pooled[name]["throughput_ips"]
            model = bare_images_per_s(bare, info)
            levels.append({"server": name, "runtime": info["runtime"],
                           "precision": info["precision"],
                           "inference_precision": info["inference_precision"],
                           "max_batch_size": info["batching"]["max_batch_size"],
                           "concurrency": concurrency, **pooled[name],
                           "throughput_vs_tensorflow": round(throughput / reference, 3),
                           "throughput_vs_bare_model": (round(throughput / model, 3)
                                                        if model else None)})
    return {"levels": levels}


def bare_images_per_s(bare: list[dict], info: dict) -> float | None:
    """The bare model's images/s at batch 1 for what a server runs (its runtime, format,
    export and inference precision), if this run timed it."""
    for row in bare:
        if (row["batch"] == 1 and row["runtime"] == info["runtime"]
                and row["format"] == info["format"] and row["precision"] == info["precision"]
                and row["inference_precision"] == info["inference_precision"]):
            return float(row["images_per_s"])
    return None


def main() -> None:
    args = parse_args()
    if args.quick:
        args.rounds, args.calls, args.requests = 1, 1, 4
    args.work.mkdir(parents=True, exist_ok=True)
    paths = exports(args)
    results: dict[str, Any] = {
        "machine": server_bench.machine(), "load_before": os.getloadavg(),
        "model": {"backbone": args.backbone, "output_stride": 16,
                  "input_size": args.input_size, "weights": "random"},
        "rounds": args.rounds}
    if not args.skip_bare:
        results["bare"] = bench_bare(args, paths)
        for row in results["bare"]:
            print(json.dumps(row), flush=True)
    if not args.skip_server:
        results["server"] = bench_servers(args, paths, results.get("bare", []))
        for level in results["server"]["levels"]:
            print(json.dumps(level), flush=True)
    results["load_after"] = os.getloadavg()
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
