"""The model repository on disk: ``DIR/<name>/<version>/``, and which versions to serve.

Only directories whose name is a plain integer are versions, so a version is published by
writing it under a temporary name (``.tmp-7``, ``7.partial``) and renaming it: a
half-copied directory is never seen.  A version is an ``atrous export`` in any format, or
a checkpoint / training run (exported once into the cache when loaded).  The version
policy says which of a model's versions to serve: the latest N (TF Serving's default,
N = 1), or specific ones, for pinning and rollback.
"""

import dataclasses
import re
from pathlib import Path

from model.inference.contract import METADATA_PATH

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_VERSION = re.compile(r"[1-9][0-9]{0,17}")  # no leading zeros: "007" and "7" would both be 7

#: The model name of a one-model repository (ATROUS_MODEL / ATROUS_CHECKPOINT / neither).
SINGLE_MODEL_NAME = "default"
SINGLE_MODEL_VERSION = 1


def check_model_name(name: str) -> str:
    """``name`` if it can be a model name (and a URL path segment), else ``ValueError``."""
    if not _MODEL_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a model name (letters, digits, '_', '.', '-'; "
                         "at most 64, starting with a letter or digit)")
    return name


@dataclasses.dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model to serve: the ``latest`` N, or exactly ``specific`` ones."""

    latest: int | None = 1
    specific: tuple[int, ...] = ()

    def select(self, versions: list[int]) -> list[int]:
        """The versions to serve among those on disk, newest first."""
        ordered = sorted(versions, reverse=True)
        if self.latest is not None:
            return ordered[: self.latest]
        return [v for v in ordered if v in self.specific]


def parse_version_policy(text: str) -> VersionPolicy:
    """``latest:N`` or ``specific:V[,V...]`` (``latest`` alone: N = 1)."""
    kind, _, value = text.strip().partition(":")
    try:
        if kind == "latest":
            count = int(value) if value.strip() else 1
            if count < 1:
                raise ValueError
            return VersionPolicy(latest=count)
        if kind == "specific":
            versions = tuple(int(v) for v in value.split(",") if v.strip())
            if not versions or min(versions) < 1:
                raise ValueError
            return VersionPolicy(latest=None, specific=versions)
    except ValueError:
        pass
    raise ValueError(f"{text!r} is not a version policy: latest:N (N >= 1) or "
                     "specific:V[,V...]")


@dataclasses.dataclass(frozen=True)
class VersionSource:
    """Where one version comes from: an export directory, or a checkpoint to export."""

    path: Path
    is_export: bool

    @property
    def stamp(self) -> tuple[int, int]:
        """Changes when the version's directory is replaced (a new inode or a new mtime)."""
        stat = self.path.stat()
        return stat.st_ino, stat.st_mtime_ns


def version_source(path: Path) -> VersionSource:
    """A version directory: an export if it holds atrous metadata, else a checkpoint/RUN."""
    return VersionSource(path, (path / METADATA_PATH).is_file())


def scan(root: Path) -> dict[str, dict[int, VersionSource]]:
    """Every model in ``root`` and its integer version directories (others are skipped:
    a temporary directory being written, a README, hidden files)."""
    models: dict[str, dict[int, VersionSource]] = {}
    for model_dir in sorted(root.expanduser().iterdir()):
        if not model_dir.is_dir() or not _MODEL_NAME.fullmatch(model_dir.name):
            continue
        versions = {}
        for version_dir in model_dir.iterdir():
            if version_dir.is_dir() and _VERSION.fullmatch(version_dir.name):
                versions[int(version_dir.name)] = version_source(version_dir)
        models[model_dir.name] = versions
    return models
