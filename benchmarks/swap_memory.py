"""Memory over hot swaps: does an unloaded version give its memory back?

A real server (``python -m app``) serves a one-model repository; version after version of
the same export is published (copied under a temporary name, renamed) and loaded with
``POST /v2/repository/models/{m}/load``; once the previous version is unloaded, one image
is segmented and the server's RSS read from /proc.  Target (issue 17): after 20 swaps the
RSS is within 10 % of its level after the 5th.

Usage::

    python benchmarks/swap_memory.py --format openvino --json benchmarks/swap_memory_openvino.json
    python benchmarks/swap_memory.py --format onnx --backbone cifar_resnet_20 --input-size 129
"""

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import httpx
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ADMIN = "bench-admin"
MODEL = "bench"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", choices=("openvino", "onnx", "savedmodel"),
                        default="openvino")
    parser.add_argument("--backbone", default="resnet_v1_101")
    parser.add_argument("--input-size", type=int, default=257)
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "atrous-swap")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args()


def build_export(args: argparse.Namespace) -> Path:
    from model.config import ModelConfig
    from model.convert import convert_model
    from model.export import UntrainedModelWarning, export_saved_model

    source = args.work / f"{args.backbone}-{args.input_size}-savedmodel"
    if not source.exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UntrainedModelWarning)
            export_saved_model(ModelConfig(backbone=args.backbone, input_size=args.input_size),
                               source)
    if args.format == "savedmodel":
        return source
    converted = args.work / f"{args.backbone}-{args.input_size}-{args.format}"
    if not converted.exists():
        convert_model(source, converted, args.format)
    return converted


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def wait(predicate, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.1)


def main() -> None:
    args = parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    export = build_export(args)
    repository = args.work / f"repository-{args.format}"
    shutil.rmtree(repository, ignore_errors=True)
    (repository / MODEL).mkdir(parents=True)
    shutil.copytree(export, repository / MODEL / "1")
    port = 18000 + os.getpid() % 1000
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "ATROUS_MODEL_REPOSITORY": str(repository),
           "ATROUS_ADMIN_KEYS": ADMIN, "ATROUS_PORT": str(port), "ATROUS_MAX_BATCH_SIZE": "1",
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    log = open(args.work / f"server-{args.format}.log", "wb")  # noqa: SIM115
    server = subprocess.Popen([sys.executable, "-m", "app"], cwd=REPO, env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    buffer = io.BytesIO()
    Image.new("RGB", (640, 480), (120, 80, 40)).save(buffer, format="JPEG")
    image = buffer.getvalue()
    samples: list[dict[str, float | None]] = []
    try:
        wait(lambda: _ready(url))
        httpx.post(url + "/segment", content=image, timeout=120).raise_for_status()
        samples.append({"version": 1, "rss_mib": rss_mib(server.pid), "swap_s": None})
        print(f"version 1: {samples[-1]['rss_mib']:.0f} MiB", flush=True)
        for version in range(2, args.swaps + 2):
            staging = repository / MODEL / f".tmp-{version}"
            shutil.copytree(export, staging)
            staging.rename(repository / MODEL / str(version))
            started = time.monotonic()
            response = httpx.post(f"{url}/v2/repository/models/{MODEL}/load", timeout=600,
                                  headers={"Authorization": f"Bearer {ADMIN}"})
            response.raise_for_status()
            wait(lambda v=version: _versions(url) == [v])  # the old one unloaded
            swap_s = time.monotonic() - started
            shutil.rmtree(repository / MODEL / str(version - 1))
            segmented = httpx.post(url + "/segment", content=image, timeout=120)
            assert segmented.headers["x-atrous-model"] == f"{MODEL}/{version}"
            samples.append({"version": version, "rss_mib": rss_mib(server.pid),
                            "swap_s": round(swap_s, 2)})
            print(f"version {version}: {samples[-1]['rss_mib']:.0f} MiB, swap {swap_s:.1f} s",
                  flush=True)
    finally:
        server.terminate()
        status = server.wait(120)
        log.close()
    after_5th, last = float(samples[5]["rss_mib"] or 0), float(samples[-1]["rss_mib"] or 0)
    result = {
        "format": args.format, "backbone": args.backbone, "input_size": args.input_size,
        "swaps": args.swaps, "cpu": _cpu(), "samples": samples,
        "rss_after_5th_mib": round(after_5th, 1), "rss_after_last_mib": round(last, 1),
        "growth_after_5th": round(last / after_5th - 1, 4), "exit_status": status,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _versions(url: str) -> list[int]:
    listing = httpx.get(url + "/v1/models", timeout=10).json()
    return [v["version"] for m in listing["models"] for v in m["versions"]]


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    main()
