"""Node-wide metrics: with PROMETHEUS_MULTIPROC_DIR set, every server process's /metrics shows
the whole node (prometheus-client's multiprocess mode), and per-version series come and go.

The node tests run real ``python -m app`` processes sharing one directory, as ``atrous serve
--workers N`` runs its workers; the mode is chosen when prometheus-client is imported, so
what needs it in a test process of its own runs in a fresh interpreter.
"""

import asyncio
import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from app.metrics import MULTIPROC_DIR_VARIABLE, Metrics
from app.repository.manager import VersionState
from tests.conftest import REPO, ServerProcess
from tests.server.test_app import wait_for
from tests.server.test_repository import fake_loader, publish, repository_settings, with_app

MB = 1024 * 1024
BUDGET_MB = 64
VERSION = {"model": "default", "version": "1"}  # the one model of ATROUS_MODEL


def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``url``'s /metrics, parsed: (name, labels) -> value."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


class Node:
    """Server processes on the tiny model sharing one metrics directory, as workers do."""

    def __init__(self, directory: Path, model: Path, logs: Path) -> None:
        self.directory, self._model, self._logs = directory, model, logs
        self.servers: list[ServerProcess] = []

    def start(self, count: int) -> list[ServerProcess]:
        env = {"ATROUS_MODEL": str(self._model), "ATROUS_MEMORY_BUDGET_MB": str(BUDGET_MB),
               MULTIPROC_DIR_VARIABLE: str(self.directory)}
        new = [ServerProcess(env, self._logs / f"server-{len(self.servers) + i}.log")
               for i in range(count)]
        self.servers.extend(new)
        return [server.wait_ready() for server in new]  # they load side by side


@pytest.fixture
def node(tmp_path: Path, tiny_saved_model: Path):
    directory = tmp_path / "metrics"
    directory.mkdir()
    started = Node(directory, tiny_saved_model, tmp_path)
    yield started
    for server in started.servers:
        server.stop()


def test_either_process_s_metrics_count_the_requests_of_both(node):
    first, second = node.start(2)
    for url, count in ((first.url, 3), (second.url, 2)):
        for seed in range(count):
            response = httpx.post(url + "/segment", content=png(seed), timeout=30)
            assert response.status_code == 200, response.text

    for server in (first, second):
        found = samples(server.url)
        ok = {"route": "/segment", "method": "POST", "status": "200"}
        assert value(found, "atrous_requests_total", **ok) == 5, server.log
        assert value(found, "atrous_model_inputs_total", **VERSION, output="labels") == 5
        assert value(found, "atrous_stage_duration_seconds_count", **VERSION,
                     stage="inference") == 5
        # live gauges: summed over the live processes (the /metrics call being served is
        # the one request in flight), readiness the least of them
        assert value(found, "atrous_requests_in_flight") == 1
        assert value(found, "atrous_memory_budget_bytes") == 2 * BUDGET_MB * MB
        assert value(found, "atrous_queue_depth", **VERSION) == 0
        assert value(found, "atrous_ready") == 1
        assert value(found, "atrous_ready", **VERSION) == 1
        assert not any(("pid", pid) in labels for _, labels in found
                       for pid in (str(first.process.pid), str(second.process.pid)))


def test_a_dead_process_s_gauges_go_once_marked_dead_and_its_counts_stay(node):
    survivor, victim = node.start(2)
    response = httpx.post(victim.url + "/segment", content=png(0), timeout=30)
    assert response.status_code == 200, response.text
    # The request is counted once its response has gone out: wait for that before the kill.
    deadline = time.monotonic() + 10
    while value(samples(survivor.url), "atrous_requests_total", route="/segment",
                method="POST", status="200") != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    victim.process.send_signal(signal.SIGKILL)  # no shutdown of its own: as a crash
    victim.process.wait(10)

    before = samples(survivor.url)
    assert value(before, "atrous_memory_budget_bytes") == 2 * BUDGET_MB * MB  # not yet told

    mark_process_dead(victim.process.pid, str(node.directory))  # what a supervisor does
    after = samples(survivor.url)
    assert value(after, "atrous_memory_budget_bytes") == BUDGET_MB * MB
    assert value(after, "atrous_ready", **VERSION) == 1
    # a counter never goes back: the dead process's requests are still counted
    assert value(after, "atrous_requests_total", route="/segment", method="POST",
                 status="200") == 1
    assert value(after, "atrous_model_inputs_total", **VERSION, output="labels") == 1


def test_an_unloaded_version_s_series_leave_and_the_others_stay():
    metrics = Metrics(max_batch_size=4)
    old, new = metrics.versions.of("voc", 1), metrics.versions.of("voc", 2)
    for series in (old, new):
        series.ready.set(1)
        series.batch_size.observe(2)
        series.stage_latency.labels(stage="decode").observe(0.01)
        series.rejections.labels(reason="client_gone").inc()
    metrics.ready.set(1)
    metrics.rejections.labels(reason="overloaded").inc()

    metrics.versions.forget("voc", 1)
    text = metrics.render().decode()
    assert 'version="1"' not in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    # one family each for the server's series and the versions' of the same name
    assert {frozenset(s.labels.items()) for s in families["atrous_ready"].samples} == {
        frozenset(), frozenset({"model": "voc", "version": "2"}.items())}
    assert {(s.labels.get("reason"), s.labels.get("version"))
            for s in families["atrous_rejections"].samples if s.name.endswith("_total")} == {
        ("overloaded", None), ("client_gone", "2")}
    assert metrics.registry.get_sample_value(
        "atrous_stage_duration_seconds_count", {"model": "voc", "version": "2",
                                                "stage": "decode"}) == 1


def test_a_version_loaded_again_while_its_old_self_unloads_keeps_its_series(tmp_path):
    """Both hold the same label set: the old one's end must not take the new one's away."""
    publish(tmp_path, "voc", 1, 1)
    publish(tmp_path, "extra", 1, 7)

    async def body(client, manager):
        with manager.lease("extra", 1) as old:  # a request still running on the old one
            unloading = asyncio.create_task(manager.unload_model("extra"))
            await wait_for(lambda: old.state is VersionState.UNLOADING)
            new = await manager.load_model("extra")
        await unloading
        return old, new, (await client.get("/metrics")).text

    app = create_app(repository_settings(tmp_path, default_model="voc"), loader=fake_loader,
                     handle_signals=False)
    old, new, text = asyncio.run(with_app(app, body))
    assert new is not old and new.state is VersionState.AVAILABLE
    assert 'atrous_ready{model="extra",version="1"} 1.0' in text
    assert 'atrous_batch_size_count{model="extra",version="1"}' in text


def test_in_multiprocess_mode_an_unloaded_version_leaves_the_answer_and_its_gauges_are_zeroed(
        tmp_path):
    """Files cannot forget a series: the worker that unloaded a version leaves it out of its
    answer (as one process does), and the files hold its live gauges at 0 for the others;
    a version still loaded, and one loaded again, are answered as before."""
    script = textwrap.dedent("""
        from prometheus_client.parser import text_string_to_metric_families
        from app.metrics import Metrics
        metrics = Metrics(max_batch_size=4)
        for version in (1, 2, 3):
            series = metrics.versions.of("voc", version)
            series.ready.set(1)
            series.queue_depth.set(3)
            series.batch_size.observe(2)
        metrics.versions.forget("voc", 1)
        metrics.versions.forget("voc", 3)
        metrics.versions.of("voc", 3).ready.set(1)  # loaded again
        seen = set()
        for family in text_string_to_metric_families(metrics.render().decode()):
            for s in family.samples:
                seen.add(s.labels.get("version"))
        print(" ".join(sorted(v for v in seen if v)))
    """)
    env = {**os.environ, MULTIPROC_DIR_VARIABLE: str(tmp_path)}
    done = subprocess.run([sys.executable, "-W", "error", "-c", script], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "3"]

    # Another worker's answer reads the same files: the unloaded version's live gauges at 0.
    other = CollectorRegistry()
    MultiProcessCollector(other, str(tmp_path))
    old = {"model": "voc", "version": "1"}
    assert other.get_sample_value("atrous_ready", old) == 0
    assert other.get_sample_value("atrous_queue_depth", old) == 0
    assert other.get_sample_value("atrous_batch_size_count", old) == 1
    assert other.get_sample_value("atrous_ready", {"model": "voc", "version": "2"}) == 1


def test_a_metrics_directory_that_does_not_exist_fails_at_start(tmp_path, monkeypatch):
    monkeypatch.setenv(MULTIPROC_DIR_VARIABLE, str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="is not a directory"):
        Metrics(max_batch_size=4)
