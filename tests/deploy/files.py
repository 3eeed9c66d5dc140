"""Parsing helpers and paths shared by the deploy tests (no Docker engine or cluster here:
the files are read and checked against each other and against the server they deploy)."""

from __future__ import annotations

import importlib.util
import re
import shlex
import socket
import tomllib
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

import yaml

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
NGINX = DEPLOY / "nginx"
COMPOSE_SCHEMA = Path(__file__).resolve().parents[3] / "shared/schemas/compose-spec.json"
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
