"""Peak server memory for concurrent large tiled requests, before and after a change.

Starts a real server (``python -m app``) from ``--repo`` (a checkout: this one, or the
``main`` worktree for the "before" figures), serving the default network (ResNet-101,
random weights, exported once into ``--cache-dir``) on its default runtime, and sends
``--concurrency`` levels of simultaneous ``POST /segment?tiling=on`` requests with one
``--size`` PNG.  The server's RSS is sampled every 20 ms with psutil; each level reports the
idle RSS just before it, the peak above it, and the statuses (200, or 503 when refused).

Usage::

    python benchmarks/memory_bench.py --repo /path/to/main --label before --json before.json
    python benchmarks/memory_bench.py --label after --json after.json
"""

import argparse
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.tiling_bench import cpu_name, photo  # noqa: E402
from tests.conftest import free_port  # noqa: E402

MB = 1024 * 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout to serve from")
    parser.add_argument("--label", default="after")
    parser.add_argument("--size", default="3000x2000")
    parser.add_argument("--concurrency", default="1,2,4")
    parser.add_argument("--cache-dir", type=Path,
                        default=Path("~/.cache/atrous/savedmodels").expanduser())
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    buffer = io.BytesIO()
    photo(width, height).save(buffer, format="PNG", compress_level=1)
    body = buffer.getvalue()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": f"{args.repo}:{args.repo / 'client'}",
           "ATROUS_PORT": str(port), "ATROUS_CACHE_DIR": str(args.cache_dir),
           "ATROUS_REQUEST_TIMEOUT_S": str(args.timeout), "TF_CPP_MIN_LOG_LEVEL": "2"}
    log = open(f"/tmp/memory_bench_{args.label}.log", "wb")  # noqa: SIM115
    server = subprocess.Popen([sys.executable, "-m", "app"], cwd=args.repo, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 1800
        while True:
            if server.poll() is not None:
                raise SystemExit(f"the server exited with {server.returncode}")
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server never became ready")
            time.sleep(1)
        process = psutil.Process(server.pid)
        levels = []
        for level in (int(v) for v in args.concurrency.split(",")):
            time.sleep(2)
            idle = process.memory_info().rss
            done = threading.Event()

            peaks = [idle]
            statuses: list[int] = []

            def sample(done: threading.Event = done, peaks: list[int] = peaks) -> None:
                while not done.is_set():
                    peaks.append(max(peaks.pop(), process.memory_info().rss))
                    time.sleep(0.02)

            def send(statuses: list[int] = statuses) -> None:
                response = httpx.post(url + "/segment", params={"tiling": "on"}, content=body,
                                      headers={"Content-Type": "image/png"},
                                      timeout=args.timeout)
                statuses.append(response.status_code)

            sampler = threading.Thread(target=sample)
            sampler.start()
            started = time.monotonic()
            senders = [threading.Thread(target=send) for _ in range(level)]
            for thread in senders:
                thread.start()
            for thread in senders:
                thread.join()
            done.set()
            sampler.join()
            peak = peaks[-1]
            row = {"concurrency": level, "idle_mb": round(idle / MB),
                   "peak_above_idle_mb": round((peak - idle) / MB),
                   "statuses": sorted(statuses),
                   "seconds": round(time.monotonic() - started, 1)}
            print(json.dumps(row), flush=True)
            levels.append(row)
    finally:
        server.terminate()
        server.wait(60)
        log.close()
    result = {"label": args.label, "repo": str(args.repo), "size": args.size,
              "cpu": cpu_name(), "levels": levels,
              "note": "taken on a machine shared with other jobs: memory is what it is, "
                      "times are noisy"}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
