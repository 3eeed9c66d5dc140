"""Atomic writes: a reader, or a process started after a crash, sees the old file or the
new one, never half of one.

* ``atomic_file`` / ``atomic_write_bytes`` / ``atomic_write_text``: the data goes to a
  temporary name in the target's own directory (so the rename never crosses a file
  system), is flushed and fsynced, then ``os.replace``-d over the target, and the
  directory is fsynced so that the rename itself survives a power cut.  An error (or a
  ``kill -9``) before the rename leaves the target as it was.
* ``staging_directory``: a directory is built under a temporary name beside its target
  and renamed into place when complete.  If the target appeared meanwhile (another
  process built the same thing first), the loser discards its copy and gets
  ``FileExistsError``: the winner's directory is never touched, since someone may
  already be loading it.
* ``remove_stale_staging``: the temporary directories a killed process left behind.

Temporary names start with a dot and the target's name (``.NAME.XXXXXXXX``), so nothing
that lists finished outputs ever picks one up.
"""

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_file", "atomic_write_bytes", "atomic_write_text", "fsync_tree",
           "remove_stale_staging", "staging_directory"]

#: A staging directory untouched for this long belongs to a process that died.
STALE_AFTER_S = 3600.0


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import, before any thread
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _temporary_prefix(target: Path) -> str:
    return f".{target.name}."


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some file systems refuse to open directories: nothing to sync then
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb", **kwargs: Any) -> Iterator[IO[Any]]:
    """Opens a temporary file beside ``path``; on a clean exit it replaces ``path``.

    Args:
        path: the file to write.
        mode: ``"wb"`` or ``"w"`` (text; ``kwargs`` such as ``encoding`` go to ``open``).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=_temporary_prefix(target), dir=target.parent)
    temporary = Path(name)
    try:
        with os.fdopen(fd, mode, **kwargs) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp's 0600 is not what open() gives
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically; returns the path."""
    with atomic_file(path, "wb") as file:
        file.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Writes ``text`` to ``path`` atomically; returns the path."""
    with atomic_file(path, "w", encoding=encoding) as file:
        file.write(text)
    return Path(path)


def fsync_tree(directory: str | Path) -> None:
    """fsyncs every file and directory under ``directory`` (and itself)."""
    root = Path(directory)
    for parent, _, files in os.walk(root, topdown=False):
        for name in files:
            fd = os.open(Path(parent) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_directory(Path(parent))


@contextlib.contextmanager
def staging_directory(target: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yields an empty temporary directory beside ``target``, renamed to ``target`` (its
    contents fsynced first) when the ``with`` body ends cleanly.

    Args:
        target: the directory to create.
        overwrite: replace an existing ``target`` (moved aside, then deleted).

    Raises:
        FileExistsError: ``target`` exists (without ``overwrite``), at the start or
            because another process renamed its own copy there first; ours is discarded.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=_temporary_prefix(target), dir=target.parent))
    try:
        yield staging
        fsync_tree(staging)
        old = None
        if overwrite and target.exists():
            old = Path(tempfile.mkdtemp(prefix=_temporary_prefix(target), dir=target.parent))
            os.replace(target, old / "old")
        try:
            os.rename(staging, target)  # fails on a non-empty target: the race's loser
        except OSError:
            raise FileExistsError(f"{target} appeared while it was being written") from None
        _fsync_directory(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def remove_stale_staging(target: str | Path, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Deletes ``target``'s temporary files and directories untouched for ``older_than_s``
    (left by a killed process; a younger one may be another process at work)."""
    target = Path(target)
    removed: list[Path] = []
    now = time.time()
    try:
        candidates = list(target.parent.glob(_temporary_prefix(target) + "*"))
    except OSError:
        return removed
    for path in candidates:
        try:
            if now - path.stat().st_mtime < older_than_s:
                continue
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed
