"""Server vs bare model: throughput and latency at several concurrencies, in one run.

The same SavedModel is measured two ways, level by level (bare then server at each
concurrency, so that drifting machine load hits both alike):

* bare: ``SavedModelRunner`` called in-process on pre-letterboxed uint8 batches of
  ``min(concurrency, max_batch_size)`` images -- the best the model alone can do, with
  no decoding, no HTTP, no encoding;
* server: ``python -m app`` (real uvicorn) on loopback, ``concurrency`` httpx clients
  each POSTing a 640x480 JPEG and reading the PNG mask back -- decode, letterbox,
  batching, inference, mask restore and PNG encode all included.

Usage::

    python benchmarks/server_bench.py                       # ResNet-101, OS 16, 513
    python benchmarks/server_bench.py --backbone cifar_resnet_20 --input-size 129 --quick

Targets (issue 3): at concurrency >= 4 the server delivers >= 90 % of the bare model's
throughput; at concurrency 1 it adds <= 10 % to the model's latency.
"""

import argparse
import asyncio
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="SavedModel to use (default: export one)")
    parser.add_argument("--backbone", default="resnet_v1_101")
    parser.add_argument("--output-stride", type=int, default=16)
    parser.add_argument("--input-size", type=int, default=513)
    parser.add_argument("--cache-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "atrous-bench-cache")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-batch-size", type=int, default=4)
    parser.add_argument("--max-batch-delay-ms", type=float, default=5.0)
    parser.add_argument("--images-per-client", type=int, default=None,
                        help="requests per client at each level (default: sized by level)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternating bare/server rounds per concurrency level")
    parser.add_argument("--quick", action="store_true", help="fewer requests (smoke run)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args()


def saved_model(args: argparse.Namespace) -> Path:
    if args.model is not None:
        return args.model
    from model.config import ModelConfig
    from model.export import cached_export

    config = ModelConfig(backbone=args.backbone, output_stride=args.output_stride,
                         input_size=args.input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cached_export(config, args.cache_dir)


def test_image(width: int = 640, height: int = 480) -> bytes:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def requests_at(concurrency: int, args: argparse.Namespace) -> int:
    if args.images_per_client:
        return args.images_per_client * concurrency
    per_level = {1: 10, 4: 24, 16: 64} if not args.quick else {1: 4, 4: 8, 16: 32}
    return per_level.get(concurrency, 2 * concurrency)


def summarise(latencies: list[float], images: int, wall: float) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"images": images, "wall_s": round(wall, 3),
            "throughput_ips": round(images / wall, 3),
            "latency_p50_ms": round(1000 * statistics.median(ordered), 1),
            "latency_p90_ms": round(1000 * ordered[min(len(ordered) - 1,
                                                       int(0.9 * len(ordered)))], 1),
            "latency_mean_ms": round(1000 * statistics.fmean(ordered), 1)}


def bench_bare(runner, concurrency: int, total: int, max_batch: int) -> dict:
    """The runner alone: batches of min(concurrency, max_batch), back to back."""
    size = runner.metadata.input_size
    batch = min(concurrency, max_batch)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    sizes = np.full((batch, 2), size, np.int32)
    runner(images, sizes)  # settle
    latencies, done = [], 0
    start = time.perf_counter()
    while done < total:
        t0 = time.perf_counter()
        runner(images, sizes)
        elapsed = time.perf_counter() - t0
        latencies.extend([elapsed] * batch)  # every image in the batch waited this long
        done += batch
    result: dict = summarise(latencies, done, time.perf_counter() - start)
    result["_latencies"] = latencies
    return result


async def bench_server(url: str, body: bytes, concurrency: int,
                       total: int) -> dict:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    timings: dict[str, list[float]] = {}
    remaining = total
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        await asyncio.gather(*(client.post("/segment", content=body)
                               for _ in range(concurrency)))  # open the connections

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                t0 = time.perf_counter()
                response = await client.post("/segment", content=body,
                                             headers={"content-type": "image/jpeg"})
                latencies.append(time.perf_counter() - t0)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                for part in response.headers.get("server-timing", "").split(","):
                    if ";dur=" in part:
                        name, value = part.strip().split(";dur=")
                        timings.setdefault(name, []).append(float(value))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    result: dict = summarise(latencies, total, wall)
    result["_latencies"] = latencies
    result["statuses"] = statuses
    result["server_timing_mean_ms"] = {
        name: round(statistics.fmean(values), 1) for name, values in timings.items()}
    return result


def measure_level(runner, url: str, body: bytes, concurrency: int,
                  args: argparse.Namespace) -> dict[str, object]:
    """Alternates bare and server rounds, so that load from elsewhere on the machine
    hits both alike; reports pooled figures and the per-round throughput ratios."""
    total = requests_at(concurrency, args)
    per_round = max(concurrency, total // args.rounds)
    bare_rounds, server_rounds = [], []
    for _ in range(args.rounds):
        bare_rounds.append(bench_bare(runner, concurrency, per_round, args.max_batch_size))
        server_rounds.append(asyncio.run(bench_server(url, body, concurrency, per_round)))
    bare, served = pool(bare_rounds), pool(server_rounds)
    ratios = [s["throughput_ips"] / b["throughput_ips"]
              for b, s in zip(bare_rounds, server_rounds, strict=True)]
    return {"concurrency": concurrency, "bare": bare, "server": served,
            "throughput_ratio": round(served["throughput_ips"] / bare["throughput_ips"], 3),
            "throughput_ratio_per_round": [round(r, 3) for r in ratios],
            "latency_overhead_p50": round(served["latency_p50_ms"] / bare["latency_p50_ms"] - 1,
                                          3)}


def pool(rounds: list[dict]) -> dict[str, Any]:
    latencies = [x for r in rounds for x in r.pop("_latencies")]
    pooled: dict[str, Any] = summarise(latencies, sum(r["images"] for r in rounds),
                                          sum(r["wall_s"] for r in rounds))
    if "statuses" in rounds[0]:
        statuses: dict[int, int] = {}
        for r in rounds:
            for status, count in r["statuses"].items():
                statuses[status] = statuses.get(status, 0) + count
        pooled["statuses"] = statuses
        names = rounds[0]["server_timing_mean_ms"].keys()
        pooled["server_timing_mean_ms"] = {
            name: round(statistics.fmean(r["server_timing_mean_ms"][name] for r in rounds), 1)
            for name in names}
    return pooled


def start_server(path: Path, args: argparse.Namespace, log: Path) -> tuple[subprocess.Popen,
                                                                            str]:
    return launch_server(path, log, {
        "ATROUS_MAX_BATCH_SIZE": str(args.max_batch_size),
        "ATROUS_MAX_BATCH_DELAY_MS": str(args.max_batch_delay_ms),
        "ATROUS_MAX_QUEUE": str(max(64, 4 * max(args.concurrency)))})


def launch_server(path: Path, log: Path,
                  settings: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """``python -m app`` serving ``path`` on a free loopback port, once ready: (process, url)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "ATROUS_MODEL": str(path), "ATROUS_HOST": "127.0.0.1",
           "ATROUS_PORT": str(port), "ATROUS_REQUEST_TIMEOUT_S": "600",
           "TF_CPP_MIN_LOG_LEVEL": "2", **settings}
    process = subprocess.Popen([sys.executable, "-m", "app"], cwd=REPO, env=env,
                               stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()}")
        try:
            if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("server not ready")


def machine() -> dict[str, object]:
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores_available": len(os.sched_getaffinity(0)),
            "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
            "tensorflow": tf.__version__, "python": platform.python_version()}


def main() -> None:
    args = parse_args()
    from model.inference.runtimes.savedmodel import SavedModelRunner

    path = saved_model(args)
    print(f"SavedModel: {path}", flush=True)
    runner = SavedModelRunner(path, warmup_batch_sizes=range(1, args.max_batch_size + 1))
    log = Path(tempfile.mkdtemp(prefix="atrous-bench-")) / "server.log"
    process, url = start_server(path, args, log)
    body = test_image()
    results: dict[str, Any] = {
        "machine": machine(), "model": json.loads(runner.metadata.to_json()),
        "settings": {"max_batch_size": args.max_batch_size,
                     "max_batch_delay_ms": args.max_batch_delay_ms, "request": "640x480 JPEG",
                     "response": "PNG mask"},
        "levels": []}
    try:
        for concurrency in args.concurrency:
            level = measure_level(runner, url, body, concurrency, args)
            results["levels"].append(level)
            print(json.dumps(level), flush=True)
    finally:
        process.terminate()
        process.wait(60)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
