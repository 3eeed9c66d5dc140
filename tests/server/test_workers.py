"""Several worker processes on one port (``ATROUS_WORKERS``), each against a real
supervisor and real spawned workers: they all answer, ``/readyz`` speaks for all of them,
SIGTERM drains them all, a killed worker is replaced, a failed start stops the server,
and overload still answers 503 + ``Retry-After`` without losing a request."""

import asyncio
import collections
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from app.budget import MB
from app.service import EXIT_WORKER_LOST
from app.settings import Settings
from app.workers.node import WORKER_HEADER
from app.workers.supervisor import (
    RestartBudget,
    cgroup_cpu_quota,
    exit_description,
    worker_settings,
)
from model.inference.contract import ModelMetadata
from tests.images import random_png as png
from tests.server.live import admitted_request, response_of

ADMIN_KEY = "workers-admin-key"


def worker_pid(response: httpx.Response) -> int:
    """The pid in ``X-Atrous-Worker: <slot>; pid=<pid>``."""
    return int(response.headers[WORKER_HEADER].split("pid=")[1])


def pids_answering(url: str, want: int, timeout: float = 60.0) -> dict[int, httpx.Response]:
    """Segments small images, 8 at a time on fresh connections (an idle node's connections
    tend to go to one worker; busy ones spread), until ``want`` workers have answered 200."""
    answers: dict[int, httpx.Response] = {}
    deadline = time.monotonic() + timeout

    async def some(first: int) -> list[tuple[int, httpx.Response]]:
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
            return list(zip(range(first, first + 8), await asyncio.gather(*(
                client.post("/segment", content=png(40 + k % 7, 30, seed=k))
                for k in range(first, first + 8))), strict=True))

    k = 0
    while len(answers) < want and time.monotonic() < deadline:
        for i, response in asyncio.run(some(k)):
            if response.status_code == 503:  # a queue of 2 per worker: full, now and then
                assert response.json()["error"]["code"] == "queue_full", response.text
                continue
            assert response.status_code == 200, response.text
            assert Image.open(io.BytesIO(response.content)).size == (40 + i % 7, 30)
            answers[worker_pid(response)] = response
        k += 8
    return answers


def readyz(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url + "/readyz", timeout=5)
    except httpx.TransportError:
        return None


def wait_for_log(server, pattern: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not re.search(pattern, server.log):
        assert time.monotonic() < deadline, f"no {pattern!r} in the log:\n{server.log}"
        assert server.process.poll() is None, server.log
        time.sleep(0.05)


@pytest.fixture(scope="module")
def two_workers(server_factory, tiny_saved_model):
    """Two workers, each with a queue of 2 (the node's: 4), and the repository API on."""
    return server_factory({"ATROUS_MODEL": str(tiny_saved_model), "ATROUS_WORKERS": "2",
                           "ATROUS_MAX_BATCH_SIZE": "1", "ATROUS_MAX_QUEUE": "2",
                           "ATROUS_MAX_BATCH_DELAY_MS": "0", "ATROUS_REQUEST_TIMEOUT_S": "5",
                           "ATROUS_RETRY_AFTER_S": "1", "ATROUS_ADMIN_KEYS": ADMIN_KEY})


def test_each_worker_gets_its_share_of_threads_and_memory(tiny_saved_model):
    settings = Settings(model=tiny_saved_model, workers=4, memory_budget_mb=1000)
    share = worker_settings(settings, cpus=16)
    assert (share.threads, share.memory_budget_mb, share.workers) == (4, 250, 4)
    assert worker_settings(settings, cpus=2).threads == 1  # never 0
    pinned = worker_settings(settings.model_copy(update={"threads": 3}), cpus=16)
    assert pinned.threads == 3
    unset = Settings(model=tiny_saved_model, workers=2)
    assert worker_settings(unset, cpus=2).memory_budget_mb == unset.memory_budget_bytes // MB // 2


def test_a_cgroup_cpu_quota_bounds_the_cpus_shared_out(tmp_path: Path):
    v2, v1 = tmp_path / "cpu.max", tmp_path / "v1"
    assert cgroup_cpu_quota(v2, v1) is None  # neither file: no quota
    v2.write_text("max 100000\n")
    assert cgroup_cpu_quota(v2, v1) is None
    v2.write_text("250000 100000\n")  # docker --cpus 2.5
    assert cgroup_cpu_quota(v2, v1) == 2.5
    v2.unlink()
    v1.mkdir()
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(v2, v1) is None
    (v1 / "cpu.cfs_quota_us").write_text("800000\n")
    assert cgroup_cpu_quota(v2, v1) == 8.0


def test_more_deaths_than_the_restart_budget_in_its_window_is_a_crash_loop():
    budget = RestartBudget(limit=2, window_s=60)
    assert budget.allow(0.0) and budget.allow(10.0)
    assert not budget.allow(20.0)  # a third death within 60 s
    assert budget.allow(75.0)  # the deaths at 0 and 10 s have left the window
    assert not RestartBudget(limit=0, window_s=60).allow(0.0)


def test_the_supervisor_names_how_a_worker_ended():
    # Every death after readiness takes the same path (the SIGKILL test below runs it); the
    # log tells a watchdog's exit (EXIT_WORKER_LOST) from a kill.
    assert exit_description(EXIT_WORKER_LOST) == "lost its inference thread (status 70)"
    assert exit_description(-signal.SIGKILL) == "was killed by SIGKILL"
    assert exit_description(1) == "exited with status 1"


def test_every_worker_answers_on_the_one_port(two_workers):
    answers = pids_answering(two_workers.url, want=2)
    assert len(answers) == 2, f"one worker answered everything:\n{two_workers.log}"
    assert os.getpid() not in answers and two_workers.process.pid not in answers
    assert readyz(two_workers.url).status_code == 200
    assert "2 workers on 127.0.0.1" in two_workers.log
    assert "memory budget" in two_workers.log and "the node queues up to 4" in two_workers.log


def test_the_repository_api_is_refused_with_several_workers(two_workers):
    response = httpx.post(two_workers.url + "/v2/repository/models/default/load",
                          headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert response.status_code == 409, response.text
    # The repository API speaks the open inference protocol: {"error": message}.
    message = response.json()["error"]
    assert message.startswith("this server runs 2 worker processes (ATROUS_WORKERS)"), message
    assert "edit the repository instead; every worker's poll applies it" in message


def test_a_killed_worker_is_restarted_and_the_server_serves_again(two_workers):
    url = two_workers.url
    before = pids_answering(url, want=2)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        response = readyz(url)
        seen.append(response.status_code if response is not None else "refused")
        if seen[-1] == 200 and 503 in seen:
            break
        time.sleep(0.05)
    assert 503 in seen and seen[-1] == 200, f"{seen[-20:]}\n{two_workers.log}"
    after = pids_answering(url, want=2)
    assert victim not in after and len(after) == 2, two_workers.log
    assert "was killed by SIGKILL after it was ready: restarting it" in two_workers.log
    assert two_workers.process.poll() is None


def test_a_worker_whose_runtime_hangs_exits_70_and_is_restarted(server_factory,
                                                                tiny_saved_model):
    """The watchdog ends a worker whose model call hangs (EXIT_WORKER_LOST, docs/server.md);
    the supervisor restarts that one and the server serves again."""
    server = server_factory({"ATROUS_MODEL": str(tiny_saved_model), "ATROUS_WORKERS": "2",
                             "ATROUS_MAX_BATCH_SIZE": "1", "ATROUS_TEST_FAULT": "hang@1",
                             "ATROUS_REQUEST_TIMEOUT_S": "2"})
    hung = httpx.post(server.url + "/segment", content=png(), timeout=30)
    assert hung.status_code == 504, hung.text
    wait_for_log(server, rf"worker \d \(pid {worker_pid(hung)}\) lost its inference thread "
                 r"\(status 70\) after it was ready: restarting it")
    server.wait_ready(60)
    assert server.process.poll() is None
    assert server.stop() == 0, server.log


def test_overload_answers_503_with_retry_after_and_loses_nothing(two_workers):
    total, concurrency = 200, 24
    bodies = [png(64 + k, 48, seed=k) for k in range(8)]

    async def main() -> dict[int, httpx.Response]:
        # Kept-alive connections, opened in a burst: each stays with the worker it reached
        # (with one shared listening socket they all reached the same one).
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(base_url=two_workers.url, timeout=30,
                                     limits=limits) as client:
            pending = list(range(total))
            results: dict[int, httpx.Response] = {}

            async def worker() -> None:
                while pending:
                    i = pending.pop()
                    results[i] = await client.post(
                        "/segment", content=bodies[i % len(bodies)],
                        headers={"X-Request-ID": f"load-{i}"})
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return results

    results = asyncio.run(main())  # a connection error would raise here
    assert sorted(results) == list(range(total))
    statuses: dict[int, int] = {}
    served: collections.Counter[int] = collections.Counter()  # 200s by worker pid
    for i, response in results.items():
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.headers["x-request-id"] == f"load-{i}"
        assert response.status_code in (200, 503), response.text
        if response.status_code == 200:
            served[worker_pid(response)] += 1
        if response.status_code == 503:
            assert response.json()["error"]["code"] == "queue_full", response.text
            assert response.headers["retry-after"] == "1"
            # The busy worker lets the connection go, to be re-spread by the kernel.
            assert response.headers["connection"] == "close"
    print(f"{total} requests: {statuses}; 200s by worker: {dict(served)}")
    assert statuses.get(200, 0) > 0 and statuses.get(503, 0) > 0, statuses
    assert len(served) == 2, f"one worker served everything: {served}"
    # One scrape, from whichever worker, counts every worker's requests (the node's metrics).
    metrics = httpx.get(two_workers.url + "/metrics").text
    counted = sum(float(line.split()[-1]) for line in metrics.splitlines()
                  if line.startswith("atrous_requests_total{") and 'route="/segment"' in line
                  and 'status="200"' in line)
    assert counted >= statuses[200] > max(served.values()), (counted, served)
    assert two_workers.process.poll() is None


def test_readyz_waits_for_every_worker_and_sigterm_drains_them_all(server_factory,
                                                                   tmp_path: Path):
    """No model given: worker 0 exports the (random) network alone, the other loads its
    export once it is ready; it is then held at a gate, and /readyz waits for it."""
    gate, cache = tmp_path / "let-worker-1-load", tmp_path / "cache"
    server = server_factory({"ATROUS_BACKBONE": "cifar_resnet_20", "ATROUS_INPUT_SIZE": "65",
                             "ATROUS_CACHE_DIR": str(cache), "ATROUS_WORKERS": "2",
                             "ATROUS_TEST_WORKER_START_GATE": f"1:{gate}",
                             "ATROUS_MAX_BATCH_SIZE": "2", "ATROUS_MAX_BATCH_DELAY_MS": "1500",
                             "ATROUS_SHUTDOWN_GRACE_S": "10"}, wait=False)
    wait_for_log(server, r"\[worker 0 pid \d+\] app\.repository\.manager: ready: default/1")
    assert "worker 0 exports the model first" in server.log
    # Worker 0 is ready, worker 1 waits at the gate: not ready, whichever answers.
    waiting: set[str] = set()
    for _ in range(200):  # fresh connections: until worker 0 has answered for worker 1
        response = readyz(server.url)
        assert response is not None and response.status_code == 503, server.log
        waiting.add(response.json()["error"]["message"])
        if "worker 1 of 2 is starting" in waiting:
            break
    assert "worker 1 of 2 is starting" in waiting, (waiting, server.log)
    gate.touch()
    server.wait_ready(60)
    wait_for_log(server, "all 2 workers ready")  # the supervisor looks twice a second
    assert len([p for p in cache.iterdir() if (p / "saved_model.pb").exists()]) == 1
    log = server.log
    used = re.search(r"\[worker 1 pid \d+\] model\.export: using cached SavedModel", log)
    assert used and log.index("] app.repository.manager: ready: default/1") < used.start(), log

    # The image waits in a batcher for company (1.5 s) when the drain begins.
    thread, outcome = admitted_request(server.url, png())
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    late = [readyz(server.url) for _ in range(6)]
    response = response_of(thread, outcome)
    try:
        returncode = server.process.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running 60 s after SIGTERM:\n{server.log}")
    assert response.status_code == 200, response.text
    assert all(r is None or r.status_code == 503 for r in late), [
        r.text for r in late if r is not None]
    assert returncode == 0, server.log
    assert server.log.count("signal 15: draining") >= 3, server.log  # supervisor + 2 workers
    assert "supervisor: stopped (status 0)" in server.log


def test_a_port_in_use_stops_the_supervisor_before_any_worker_starts(server_factory,
                                                                      tiny_saved_model):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = server_factory({"ATROUS_MODEL": str(tiny_saved_model), "ATROUS_WORKERS": "2",
                                 "ATROUS_PORT": str(taken.getsockname()[1])}, wait=False)
        assert server.process.wait(60) == 1, server.log
    assert "cannot bind 127.0.0.1" in server.log and "worker 0: started" not in server.log


def test_a_worker_that_fails_at_start_stops_the_server_with_status_1(server_factory,
                                                                     tmp_path: Path,
                                                                     tiny_saved_model):
    broken = tmp_path / "broken"  # valid metadata (so settings pass), a garbage graph
    (broken / "assets.extra").mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"not a protobuf")
    ModelMetadata.read(tiny_saved_model).write(broken)
    server = server_factory({"ATROUS_MODEL": str(broken), "ATROUS_WORKERS": "2"}, wait=False)
    assert server.process.wait(60) == 1, server.log
    assert "model loading failed" in server.log
    assert "before it was ready: stopping the server" in server.log
    assert "supervisor: stopped (status 1)" in server.log


def test_a_swap_leaves_the_old_version_out_of_every_worker_s_metrics(server_factory,
                                                                      tiny_saved_model,
                                                                      tmp_path: Path):
    """Each worker's poll swaps version 1 for 2; the files cannot forget version 1, but no
    worker's /metrics shows it once that worker has unloaded it (as one process)."""
    repository = tmp_path / "repository"
    (repository / "voc").mkdir(parents=True)
    shutil.copytree(tiny_saved_model, repository / "voc" / "1")
    server = server_factory({"ATROUS_MODEL_REPOSITORY": str(repository), "ATROUS_WORKERS": "2",
                             "ATROUS_REPOSITORY_POLL_S": "0.3", "ATROUS_MAX_BATCH_SIZE": "1",
                             "ATROUS_MAX_BATCH_DELAY_MS": "0"})
    assert len(pids_answering(server.url, want=2)) == 2  # both count version 1's requests
    shutil.copytree(tiny_saved_model, repository / "voc" / ".tmp-2")
    (repository / "voc" / ".tmp-2").rename(repository / "voc" / "2")

    def answers_by_worker() -> dict[int, str]:
        seen: dict[int, str] = {}
        for _ in range(16):  # fresh connections: the kernel spreads them over the workers
            response = httpx.get(server.url + "/metrics", timeout=10,
                                 headers={"Connection": "close"})
            seen[worker_pid(response)] = response.text
        return seen

    def swapped(text: str) -> bool:
        # Readiness is the node's (the least over the workers): 1 once both serve version 2.
        return ('version="1"' not in text
                and 'atrous_ready{model="voc",version="2"} 1.0' in text)

    deadline = time.monotonic() + 60
    while True:
        # One worker's answer may be read while the other still loads version 2: wait for
        # a round of answers taken once both have swapped.
        answers = answers_by_worker()
        if len(answers) == 2 and all(swapped(text) for text in answers.values()):
            break
        assert time.monotonic() < deadline, (
            f"version 1 still in a worker's /metrics: {answers}\n{server.log}")
        time.sleep(0.3)
    for text in answers.values():
        # the node's counters still count version 1's requests (they have no version label)
        assert re.search(r'atrous_requests_total\{method="POST",route="/segment",'
                         r'status="200"\} [1-9]', text), text
