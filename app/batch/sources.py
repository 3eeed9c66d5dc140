"""SRC -> the images of a job: ``Item(key, uri)`` in key order.

SRC is a directory (every file below it, recursively, but hidden ones), a glob, or a text
manifest (one path or URI a line; ``#`` comments), on any filesystem fsspec knows
(``s3://``, ``gs://``, ``file://``, a plain path).  A key is the image's path relative to
SRC (the glob's fixed prefix, the manifest's entry as written), so it names the image in
the output whichever machine reads it, and a rerun finds the same keys.
"""

import dataclasses
import posixpath
from typing import Any

__all__ = ["Item", "list_source"]

_GLOB = ("*", "?", "[")


@dataclasses.dataclass(frozen=True)
class Item:
    """One input: its key (relative to SRC) and where to read it (a path or URI)."""

    key: str
    uri: str


def list_source(source: str) -> list[Item]:
    """Lists SRC.

    Raises:
        ValueError: SRC does not exist, names nothing, or has keys that repeat.
    """
    import fsspec

    fs, root = fsspec.core.url_to_fs(source)
    if any(ch in root for ch in _GLOB):
        base = _fixed_prefix(root)
        paths = [p for p in fs.glob(root) if not fs.isdir(p)]  # a dead link: an error row
        items = [Item(_relative(p, base), _uri(fs, p)) for p in paths]
    elif fs.isdir(root):
        items = [Item(_relative(p, root), _uri(fs, p)) for p in fs.find(root)
                 if not any(part.startswith(".") for part in _relative(p, root).split("/"))]
    elif fs.isfile(root):
        items = _manifest(fs, root)
    else:
        raise ValueError(f"{source}: no such directory, glob or manifest")
    items.sort(key=lambda item: item.key)
    keys = [item.key for item in items]
    repeated = sorted({k for k, n in zip(keys, keys[1:], strict=False) if k == n})
    if repeated:
        raise ValueError(f"{source}: these keys name more than one image: "
                         + ", ".join(repeated[:5]))
    return items


def _manifest(fs: Any, path: str) -> list[Item]:
    """One entry a line: relative entries are read beside the manifest; the key is the entry
    as written, without a scheme or a leading slash."""
    folder = posixpath.dirname(path)
    items = []
    for line in fs.cat_file(path).decode("utf-8").splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if "://" in entry:
            uri, key = entry, entry.split("://", 1)[1]
        elif entry.startswith("/"):
            uri, key = entry, entry
        else:
            uri, key = _uri(fs, posixpath.join(folder, entry)), entry
        key = posixpath.normpath(key).lstrip("/")
        if key == ".." or key.startswith("../"):
            raise ValueError(f"{path}: {entry!r} climbs out of the manifest's folder; "
                             "write it as an absolute path or a URI")
        items.append(Item(key, uri))
    return items


def _fixed_prefix(pattern: str) -> str:
    """The folder of a glob before its first wildcard: keys are relative to it."""
    parts = pattern.split("/")
    fixed = []
    for part in parts[:-1]:
        if any(ch in part for ch in _GLOB):
            break
        fixed.append(part)
    return "/".join(fixed)


def _relative(path: str, base: str) -> str:
    return posixpath.relpath(path, base) if base else path.lstrip("/")


def _uri(fs: Any, path: str) -> str:
    """A path the readers can open anywhere: with its scheme unless it is local."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else fs.unstrip_protocol(path)
