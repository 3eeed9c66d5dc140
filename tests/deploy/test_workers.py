"""Workers per GPU: compose and Kubernetes run the same number of server processes per GPU
(``ATROUS_WORKERS``) with the CPUs to match (2 per worker), and the docs say so."""

from __future__ import annotations

from typing import Any

from app.settings import Settings
from tests.deploy.files import DOCS, compose, interpolate_default

#: CPUs per worker: its decode/encode threads and event loop (docs/deploy.md).
CPUS_PER_WORKER = 2


def k8s_cpus(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def compose_workers() -> int:
    environment = compose("atrous-service.yml")["services"]["atrous"]["environment"]
    return int(interpolate_default(environment["ATROUS_WORKERS"]))


def test_kubernetes_runs_several_workers_with_two_cpus_each(
        k8s: dict[str, dict[str, Any]], container: dict[str, Any]) -> None:
    workers = int(k8s["ConfigMap"]["data"]["ATROUS_WORKERS"])
    assert workers > 1
    assert Settings(workers=workers).workers == workers  # a valid value
    resources = container["resources"]
    request, limit = (k8s_cpus(str(resources[kind]["cpu"])) for kind in ("requests", "limits"))
    # Request = limit: the quota the workers divide into threads is what was reserved.
    assert request == limit == CPUS_PER_WORKER * workers


def test_compose_runs_as_many_workers_per_gpu_as_kubernetes(
        k8s: dict[str, dict[str, Any]]) -> None:
    workers = compose_workers()
    # The image's init is PID 1 (test_dockerfile); compose must not put a second one above it.
    assert "init" not in compose("atrous-service.yml")["services"]["atrous"]
    assert workers == int(k8s["ConfigMap"]["data"]["ATROUS_WORKERS"])
    for name in ("docker-compose.yml", "docker-compose.multi-gpu.yml"):
        for service_name, service in compose(name)["services"].items():
            if "extends" not in service:
                continue
            resources = service["deploy"]["resources"]
            cpus = {float(interpolate_default(resources[kind]["cpus"]))
                    for kind in ("limits", "reservations")}
            assert cpus == {CPUS_PER_WORKER * workers}, f"{name}:{service_name}: {cpus}"


def test_deploy_docs_state_the_workers_and_the_figures() -> None:
    text = DOCS.read_text()
    workers = compose_workers()
    assert f"`ATROUS_WORKERS={workers}` per GPU" in text
    assert f"**{CPUS_PER_WORKER} CPUs per worker**" in text
    assert "249 images/s" in text and "NVIDIA MPS" in text and "memory growth" in text
