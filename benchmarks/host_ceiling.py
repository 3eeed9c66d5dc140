"""The host path's ceiling: how many images/s the server's CPU side can feed a model that
costs (almost) nothing, and how many CPU milliseconds each image costs the server.

The model is ``cifar_resnet_20`` at input 129 on ONNX Runtime (random weights: its masks
are meaningless, but every request makes the same bytes, which the clients check), so
what is measured is the request path around the model: HTTP, multipart parsing, JPEG
decode, letterbox, batching, mask restore, PNG encode, thread handoffs.

For each server (a source tree: ``--src``, so that two commits are compared in one run on
one machine), each worker count (``--workers``, ``ATROUS_WORKERS``) and each concurrency,
a real ``python -m app`` is started on loopback and driven by ``--client-procs`` load
processes (raw keep-alive HTTP/1.1 over asyncio, so the load costs little CPU of its own)
that POST a 640x480 JPEG as a multipart ``image`` field and read the PNG mask back.
Reported: images/s, the server's CPU ms per image (every process of the server, user +
system, from psutil), p50/p99 latency, non-200 answers, and the bare model's images/s and
CPU ms per image.

Usage::

    python benchmarks/host_ceiling.py                          # this tree, 1 worker
    python benchmarks/host_ceiling.py --workers 1 2 --concurrency 16 32
    python benchmarks/host_ceiling.py --src /tmp/before . --json out.json   # before/after
    python benchmarks/host_ceiling.py --model-threads 1     # the model as a GPU would be

On a CPU the stand-in model is not free: by default its runtime takes every core of its
process (2 threads here), as the server gives any model, and its thread pool wakes per
operator on the cores that decode.  A GPU's runtime takes one host thread, which launches
kernels; ``--model-threads 1`` measures the host path as a GPU node would run it.
"""

import argparse
import asyncio
import io
import json
import multiprocessing
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BOUNDARY = "atrousbenchboundary"

from app.workers.supervisor import usable_cpus  # noqa: E402
from benchmarks.tiling_bench import cpu_name  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path,
                        help="ONNX export to serve (default: export cifar_resnet_20 at 129)")
    parser.add_argument("--runtime", default="onnxruntime")
    parser.add_argument("--src", type=Path, nargs="+", default=[REPO],
                        help="source trees to run the server from (before/after)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--client-procs", type=int, default=None,
                        help="load processes (default: a quarter of the cores, at least 1)")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured time per level")
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=1,
                        help="passes over every (src, workers, concurrency), interleaved")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--model-threads", type=int, default=None,
                        help="the runtime's CPU threads per server process (ATROUS_THREADS; "
                             "the decode threads stay each tree's own default for the worker "
                             "count). 1 stands for a GPU, whose runtime takes one host thread "
                             "to launch its kernels; unset: the server's default (its share "
                             "of the cores), which also runs the stand-in model on them")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra server environment (repeatable)")
    parser.add_argument("--gc-probe", action="store_true",
                        help="log the server's full (generation 2) garbage collections, which "
                             "stop every thread, and report those of each measured level")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args()


# Loaded by the server's interpreter at start (a ``sitecustomize`` on its PYTHONPATH) with
# --gc-probe: one line per full collection, "start (epoch s) duration (ms)".
GC_PROBE = """
import gc, os, threading, time
_path, _started = os.environ["ATROUS_BENCH_GC_LOG"], {}
def _probe(phase, info):
    if info["generation"] != 2:
        return
    if phase == "start":
        _started[threading.get_ident()] = (time.time(), time.perf_counter())
    elif threading.get_ident() in _started:
        wall, began = _started.pop(threading.get_ident())
        with open(_path, "a") as log:
            log.write(f"{wall:.6f} {1000 * (time.perf_counter() - began):.3f}\\n")
gc.callbacks.append(_probe)
"""


def full_collections(log: Path | None, start: float, stop: float) -> dict[str, float] | None:
    """The server's full collections that began in [start, stop] (epoch s): count, longest
    and total ms; None without --gc-probe."""
    if log is None:
        return None
    durations = [float(d) for t, d in (line.split() for line in
                                       (log.read_text().splitlines() if log.exists() else []))
                 if start <= float(t) <= stop]
    return {"count": len(durations), "max_ms": max(durations, default=0.0),
            "total_ms": sum(durations)}


def machine() -> dict:
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()}


def tiny_model(args: argparse.Namespace) -> Path:
    if args.model is not None:
        return args.model
    return export_near_free(
        Path(tempfile.gettempdir()) / "atrous-host-ceiling" / "cifar_resnet_20_129_onnx")


def export_near_free(out: Path) -> Path:
    """The near-free model, ``cifar_resnet_20`` at input 129 as ONNX, exported into ``out``
    unless it is there already."""
    if not (out / "model.onnx").exists():
        subprocess.run([sys.executable, "-m", "app.cli", "export", "--backbone",
                        "cifar_resnet_20", "--input-size", "129", "--format", "onnx",
                        "--out", str(out), "--overwrite"], cwd=REPO, check=True)
    return out


def test_jpeg(width: int = 640, height: int = 480) -> bytes:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def request_bytes(port: int, jpeg: bytes) -> bytes:
    body = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"bench.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()
    body += jpeg + f"\r\n--{BOUNDARY}--\r\n".encode()
    head = (f"POST /segment HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


# -- the load: raw keep-alive HTTP/1.1, many connections per process -------------------

async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length)


async def _connection(port: int, request: bytes, expected: bytes, start: float, stop: float,
                      out: dict) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while True:
            sent = time.monotonic()
            if sent >= stop:
                return
            writer.write(request)
            status, body = await _read_response(reader)
            done = time.monotonic()
            if sent < start:
                continue  # warm-up
            if status == 200:
                if body != expected:
                    out["wrong"] += 1
                out["ok"] += 1
                out["latencies"].append(done - sent)
            else:
                out["statuses"][status] = out["statuses"].get(status, 0) + 1
    finally:
        writer.close()


def _load_process(port: int, request: bytes, expected: bytes, connections: int, start: float,
                  stop: float, results: "multiprocessing.Queue[dict]") -> None:
    out: dict = {"ok": 0, "wrong": 0, "statuses": {}, "latencies": [], "errors": 0}

    async def main() -> None:
        tasks = [_connection(port, request, expected, start, stop, out)
                 for _ in range(connections)]
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, BaseException):
                out["errors"] += 1
                out.setdefault("error", repr(result))

    cpu = time.process_time()
    asyncio.run(main())
    out["cpu_s"] = time.process_time() - cpu
    results.put(out)


# -- one server ------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def default_decode_threads(src: Path, env: dict[str, str], workers: int) -> int:
    """The decode threads the tree at ``src`` gives one of ``workers`` worker processes
    when ``ATROUS_THREADS`` is unset (older trees: a fixed number)."""
    query = ("from app.settings import Settings as S\n"
             f"s = S(threads={max(1, usable_cpus() // workers)}) if 'threads' in S.model_fields "
             "else S()\n"
             "print(getattr(s, 'decode_threads', None) or s.decode_concurrency)")
    out = subprocess.run([sys.executable, "-c", query], cwd=src, env=env, check=True,
                         capture_output=True, text=True)
    return int(out.stdout.split()[-1])


class Server:
    def __init__(self, src: Path, model: Path, workers: int, args: argparse.Namespace,
                 log: Path, gc_log: Path | None = None) -> None:
        self.port = free_port()
        self.gc_log = gc_log
        probe = [str(gc_log.parent / "probe")] if gc_log is not None else []
        path = os.pathsep.join([*probe, str(src), str(src / "client"),
                                os.environ.get("PYTHONPATH", "")])
        env = {**os.environ, "PYTHONPATH": path.rstrip(os.pathsep), "PYTHONUNBUFFERED": "1",
               "ATROUS_HOST": "127.0.0.1", "ATROUS_PORT": str(self.port),
               "ATROUS_MODEL": str(model), "ATROUS_RUNTIME": args.runtime,
               "ATROUS_WORKERS": str(workers), "ATROUS_MAX_QUEUE": "1024",
               "ATROUS_MAX_BATCH_SIZE": str(args.max_batch_size),
               "TF_CPP_MIN_LOG_LEVEL": "2"}
        if args.model_threads is not None:
            # ATROUS_THREADS alone would also size the decode threads of a tree that derives
            # them from it: they keep that tree's default for a worker of this count.
            env["ATROUS_DECODE_CONCURRENCY"] = str(default_decode_threads(src, env, workers))
            env["ATROUS_THREADS"] = str(args.model_threads)
        env.update(item.split("=", 1) for item in args.env)
        if gc_log is not None:
            env["ATROUS_BENCH_GC_LOG"] = str(gc_log)
        self.log = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen([sys.executable, "-m", "app"], cwd=src, env=env,
                                        stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 180.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited {self.process.returncode}:\n"
                                   + self.log.read_text(errors="replace")[-3000:])
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server not ready:\n" + self.log.read_text(errors="replace")[-3000:])

    def processes(self) -> list[psutil.Process]:
        """The server's process and all its children (workers); none once it is gone."""
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> tuple[float, float]:
        """User + system CPU of the server and all its processes (workers, children), and
        of their main threads alone (the event loops: one process's ceiling)."""
        total = loops = 0.0
        for p in self.processes():
            try:
                t = p.cpu_times()
                total += t.user + t.system
                loops += sum(th.user_time + th.system_time for th in p.threads()
                             if th.id == p.pid)
            except psutil.NoSuchProcess:
                pass
        return total, loops

    def context_switches(self) -> int | None:
        """Context switches so far of every thread of every server process (voluntary:
        a wait, e.g. for the GIL; involuntary: preempted); None off Linux."""
        if not Path("/proc/self/task").exists():
            return None
        total = 0
        for p in self.processes():
            for status in Path(f"/proc/{p.pid}/task").glob("*/status"):
                try:
                    lines = status.read_text().splitlines()
                except OSError:  # a thread or process gone meanwhile
                    continue
                total += sum(int(line.split()[1]) for line in lines
                             if line.startswith(("voluntary_ctxt", "nonvoluntary_ctxt")))
        return total

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


def stage_totals(port: int) -> dict[str, float]:
    """Sums and counts of the server's stage and batch-size histograms (``/metrics``)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in ("atrous_stage_duration_seconds", "atrous_batch_size"):
            continue
        for sample in family.samples:
            suffix = sample.name.rpartition("_")[2]
            if suffix in ("sum", "count"):
                key = f"{sample.labels.get('stage', 'batch')}_{suffix}"
                totals[key] = totals.get(key, 0.0) + sample.value
    return totals


def stage_means(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean ms per image of each stage, and the mean batch size, over the measurement."""
    means = {}
    for key in after:
        if key.endswith("_count"):
            name = key[:-6]
            count = after[key] - before.get(key, 0.0)
            total = after.get(name + "_sum", 0.0) - before.get(name + "_sum", 0.0)
            if count:
                means[name if name == "batch" else f"{name}_ms"] = (
                    total / count if name == "batch" else 1000 * total / count)
    return means


def measure(server: Server, jpeg: bytes, concurrency: int, args: argparse.Namespace,
            client_procs: int) -> dict:
    import httpx

    files = {"image": ("bench.jpg", jpeg, "image/jpeg")}
    reference = httpx.post(f"http://127.0.0.1:{server.port}/segment", files=files, timeout=60)
    reference.raise_for_status()
    request = request_bytes(server.port, jpeg)
    procs = max(1, min(client_procs, concurrency))
    per_proc = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    results: multiprocessing.Queue[dict] = multiprocessing.Queue()
    start = time.monotonic() + 1.0 + args.warmup_s  # 1 s for the load processes to start
    stop = start + args.seconds
    loaders = [multiprocessing.Process(target=_load_process, args=(
        server.port, request, reference.content, n, start, stop, results)) for n in per_proc]
    for p in loaders:
        p.start()
    time.sleep(max(0.0, start - time.monotonic()))
    switches_before = server.context_switches()
    cpu_before, wall_before, epoch_before = server.cpu_seconds(), time.monotonic(), time.time()
    stages_before = stage_totals(server.port)
    time.sleep(max(0.0, stop - time.monotonic()))
    cpu_after, wall_after, epoch_after = server.cpu_seconds(), time.monotonic(), time.time()
    switches_after = server.context_switches()
    stages = stage_means(stages_before, stage_totals(server.port))
    outs = [results.get(timeout=120) for _ in loaders]
    for p in loaders:
        p.join()
    ok = sum(o["ok"] for o in outs)
    latencies = sorted(x for o in outs for x in o["latencies"])
    statuses: dict[str, int] = {}
    for o in outs:
        for status, n in o["statuses"].items():
            statuses[str(status)] = statuses.get(str(status), 0) + n
    server_cpu = cpu_after[0] - cpu_before[0]
    loop_cpu = cpu_after[1] - cpu_before[1]
    return {
        "concurrency": concurrency,
        "images_per_s": ok / (wall_after - wall_before),
        "server_cpu_ms_per_image": 1000 * server_cpu / ok if ok else None,
        "server_cores_busy": server_cpu / (wall_after - wall_before),
        "event_loop_cpu_ms_per_image": 1000 * loop_cpu / ok if ok else None,
        "load_cpu_ms_per_image": 1000 * sum(o["cpu_s"] for o in outs) / ok if ok else None,
        "context_switches_per_image": ((switches_after - switches_before) / ok
                                       if ok and switches_before is not None
                                       and switches_after is not None else None),
        "p50_ms": 1000 * statistics.median(latencies) if latencies else None,
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else None,
        "ok": ok, "wrong_bytes": sum(o["wrong"] for o in outs), "other_statuses": statuses,
        "connection_errors": sum(o["errors"] for o in outs),
        "first_error": next((o["error"] for o in outs if "error" in o), None),
        "response_bytes": len(reference.content),
        "stages": {k: round(v, 2) for k, v in stages.items()},
        "full_collections": full_collections(server.gc_log, epoch_before, epoch_after),
    }


def bare_model(model: Path, runtime: str, batch: int, seconds: float = 3.0,
               threads: int | None = None) -> tuple[float, float]:
    """The model alone, in this process: images/s on letterboxed canvases, and its CPU ms
    per image (the part of the server's CPU per image that is not the host path's)."""
    from model.inference.runtimes import load_runtime

    segmenter = load_runtime(model, runtime, threads=threads)
    size = segmenter.metadata.input_size
    canvases = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), np.uint8)
    valid = np.full((batch, 2), size, np.int32)
    segmenter(canvases, valid)
    done, started, cpu = 0, time.monotonic(), time.process_time()
    while time.monotonic() - started < seconds:
        segmenter(canvases, valid)
        done += batch
    return done / (time.monotonic() - started), 1000 * (time.process_time() - cpu) / done


def describe(src: Path) -> str:
    """The tree's name and commit (``+dirty`` with uncommitted changes); a tree that is
    not the top of a git checkout (an exported copy) by its name alone."""
    src = src.resolve()

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != src:
            return src.name
        dirty = git("status", "--porcelain", "-uno")
        return f"{src.name}@{git('rev-parse', '--short', 'HEAD')}{'+dirty' if dirty else ''}"
    except (subprocess.CalledProcessError, FileNotFoundError):
        return src.name


def main() -> None:
    args = parse_args()
    model = tiny_model(args).resolve()
    client_procs = args.client_procs or max(1, (os.cpu_count() or 2) // 4)
    jpeg = test_jpeg()
    info = {**machine(), "model": str(model), "runtime": args.runtime,
            "client_procs": client_procs, "seconds": args.seconds,
            "max_batch_size": args.max_batch_size, "model_threads": args.model_threads,
            "env": args.env}
    print(json.dumps(info))
    bare, bare_cpu = bare_model(model, args.runtime, args.max_batch_size,
                                threads=args.model_threads)
    print(f"bare model: {bare:.0f} images/s, {bare_cpu:.2f} CPU ms/image "
          f"(batch {args.max_batch_size}, this process)")
    rows = []
    logs = Path(tempfile.mkdtemp(prefix="atrous-host-ceiling-"))
    if args.gc_probe:
        (logs / "probe").mkdir()
        (logs / "probe" / "sitecustomize.py").write_text(GC_PROBE)
    for round_ in range(args.rounds):
        for workers in args.workers:
            for src in args.src:
                label = describe(src)
                name = f"{label.replace('/', '_')}-{workers}-{round_}"
                server = Server(src.resolve(), model, workers, args, logs / f"{name}.log",
                                logs / f"gc-{name}.txt" if args.gc_probe else None)
                try:
                    server.wait_ready()
                    for concurrency in args.concurrency:
                        row = {"src": label, "workers": workers, "round": round_,
                               **measure(server, jpeg, concurrency, args, client_procs)}
                        rows.append(row)
                        print(f"{label:28s} workers {workers} c {concurrency:3d}: "
                              f"{row['images_per_s']:7.1f} images/s, server "
                              f"{row['server_cpu_ms_per_image'] or 0:5.2f} CPU ms/image "
                              f"({row['server_cores_busy']:.2f} cores; event loop "
                              f"{row['event_loop_cpu_ms_per_image'] or 0:.2f}; "
                              f"{row['context_switches_per_image'] or 0:.1f} context "
                              f"switches), p50 "
                              f"{row['p50_ms'] or 0:.1f} ms, p99 {row['p99_ms'] or 0:.1f} ms, "
                              f"other {row['other_statuses']}, wrong {row['wrong_bytes']}, "
                              f"conn errors {row['connection_errors']}; {row['stages']}"
                              + (f"; full collections {row['full_collections']}"
                                 if args.gc_probe else ""), flush=True)
                finally:
                    server.stop()
    result = {"machine": info, "bare_images_per_s": bare, "bare_cpu_ms_per_image": bare_cpu,
              "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
