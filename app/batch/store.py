"""DST: the result rows as Parquet parts, PNG masks, claims, the summary and ``_SUCCESS``.

Layout (``docs/batch.md``)::

    DST/part-<run>-<id>.parquet     one per batch, the rows (``--output parquet``)
    DST/<key>.png                   the masks (``--output png``), and then the rows
    DST/_manifest/part-*.parquet      ... without the mask bytes, ``mask_path`` set
    DST/_claims/<run>/              batches in flight (crash quarantine, ``rows``)
    DST/_summary.json, DST/_SUCCESS the job's counts; written when it completed

Nothing is overwritten by another task: each batch writes its own part under a fresh name,
each file is written under a hidden temporary name in its folder and then renamed (readers
-- pyarrow, Spark, pandas -- skip names that start with ``.`` or ``_``).  A part is only
there whole, so after any interruption the ``ok`` rows in DST are exactly the work done;
``finalise`` then drops the rows that a later attempt superseded (an error retried, a batch
run twice after a crash), leaving one row per image.
"""

import dataclasses
import functools
import hashlib
import json
import posixpath
import re
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from model.atomic import atomic_write_bytes

__all__ = ["FileClaims", "Store", "Tally", "new_run_id", "schema"]

SUCCESS = "_SUCCESS"
SUMMARY = "_summary.json"
MANIFEST = "_manifest"
CLAIMS = "_claims"

#: The temporary names ``_put`` writes under, and leaves behind when killed mid-write:
#: ``model.atomic``'s ``.NAME.XXXXXXXX`` (a local disk) or ``.NAME.<hex8>.tmp``.
_TEMPORARY = re.compile(r"\..+\.([a-z0-9_]{8}|[0-9a-f]{8}\.tmp)")


@functools.cache
def schema() -> Any:
    """The rows' ``pyarrow.Schema`` (pyarrow is imported only when a job runs)."""
    import pyarrow as pa

    return pa.schema([
        ("key", pa.string()), ("uri", pa.string()), ("status", pa.string()),
        ("error_code", pa.string()), ("error", pa.string()),
        ("width", pa.int32()), ("height", pa.int32()),
        ("mask", pa.binary()), ("mask_path", pa.string()),
        ("classes", pa.list_(pa.struct([
            ("id", pa.int32()), ("label", pa.string()), ("pixels", pa.int64()),
            ("fraction", pa.float64()), ("bbox", pa.list_(pa.int32()))]))),
        ("model", pa.string()), ("runtime", pa.string()), ("ms", pa.float64()),
    ])


def new_run_id() -> str:
    """Sortable by start time, so a later run's rows win ties in ``finalise``."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


@dataclasses.dataclass(frozen=True)
class Tally:
    """The final rows of a job, over its inputs."""

    ok: int
    errors: dict[str, tuple[str, str]]  # key -> (error_code, message)
    missing: tuple[str, ...]  # inputs without a row (the job did not complete)
    superseded: int  # rows dropped: retried errors, batches run twice


class Store:
    """One job's DST (picklable: Ray workers write their own parts)."""

    def __init__(self, destination: str, output: str, run: str) -> None:
        import fsspec

        if output not in ("parquet", "png"):
            raise ValueError(f"output must be parquet or png, got {output!r}")
        self.destination, self.output, self.run = destination, output, run
        self.fs, self.root = fsspec.core.url_to_fs(destination)
        self.local = isinstance(self.fs, fsspec.implementations.local.LocalFileSystem)
        self.rows_dir = self.root if output == "parquet" else posixpath.join(self.root, MANIFEST)
        self.claims_dir = posixpath.join(self.root, CLAIMS, run)
        # What _best has read: part -> its keys, and each key's winning row so far.
        self._scanned: dict[str, list[str]] = {}
        self._winners: dict[str, _Winner] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Workers get the destination, not what the driver has read of it."""
        return {**self.__dict__, "_scanned": {}, "_winners": {}}

    # --- the driver ------------------------------------------------------------------------

    def open(self, *, resume: bool) -> None:
        """Creates DST; without ``resume`` it must be new or empty (never mixed with old
        results); with it, claims of interrupted runs are dropped (one job per DST)."""
        if self.fs.exists(self.root):
            if not resume and self.fs.ls(self.root):
                raise FileExistsError(f"{self.destination} is not empty: pass --resume to "
                                      "continue the job there, or choose another DST")
            stale = posixpath.join(self.root, CLAIMS)
            if self.fs.exists(stale):
                self.fs.rm(stale, recursive=True)
            for temporary in self._temporaries():
                self.fs.rm(temporary)  # a part or a mask a killed run never finished
            for marker in (SUCCESS, SUMMARY):
                if self.fs.exists(posixpath.join(self.root, marker)):
                    self.fs.rm(posixpath.join(self.root, marker))
        self.fs.makedirs(self.rows_dir, exist_ok=True)

    def _temporaries(self) -> list[str]:
        """Every file ``_put`` left under a temporary name (rows, masks, the summary)."""
        return [path for path in self.fs.find(self.root)
                if _TEMPORARY.fullmatch(posixpath.basename(path))]

    def parts(self) -> list[str]:
        """Every complete part, oldest run first."""
        return sorted(self.fs.glob(posixpath.join(self.rows_dir, "part-*.parquet")))

    def ok_keys(self) -> set[str]:
        """The keys that already have an ``ok`` row: a resumed job skips them."""
        return {key for key, row in self._best().items() if row.status == "ok"}

    def finalise(self, keys: Sequence[str]) -> Tally:
        """Leaves one row per key (``ok`` over ``error``, then the later run), dropping the
        rest part by part (a part rewritten under a temporary name, then renamed over);
        each step is atomic, so a finalise interrupted and rerun ends the same.  Only the
        parts written since ``ok_keys`` are read again, and only the parts that hold a
        superseded row are read whole."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        best = self._best()
        superseded = 0
        for part, part_keys in self._scanned.items():
            winners = [best[key].part == part and best[key].row == index
                       for index, key in enumerate(part_keys)]
            if all(winners):
                continue
            superseded += len(winners) - sum(winners)
            if any(winners):
                table = pq.read_table(part, filesystem=self.fs, schema=schema())
                self._put(part, _parquet(table.filter(pa.array(winners))))
            else:
                self.fs.rm(part)
        self._scanned, self._winners = {}, {}  # the parts changed: a later call reads again
        wanted = set(keys)
        errors = {key: (row.error_code or "", row.error or "") for key, row in best.items()
                  if row.status == "error" and key in wanted}
        ok = sum(1 for key, row in best.items() if row.status == "ok" and key in wanted)
        missing = tuple(sorted(wanted - set(best)))
        claims = posixpath.join(self.root, CLAIMS)
        if self.fs.exists(self.claims_dir):
            self.fs.rm(self.claims_dir, recursive=True)
        if self.fs.exists(claims) and not self.fs.ls(claims):
            self.fs.rm(claims, recursive=True)
        return Tally(ok, errors, missing, superseded)

    def write_summary(self, summary: dict[str, Any], *, success: bool) -> None:
        self._put(posixpath.join(self.root, SUMMARY),
                  (json.dumps(summary, indent=2) + "\n").encode())
        if success:
            self._put(posixpath.join(self.root, SUCCESS), b"")

    def _best(self) -> dict[str, "_Winner"]:
        """key -> its winning row: ``ok`` over ``error``, then the later part.  Reads the
        key and status columns of the parts not read yet (a resumed job read the older
        ones at its start, and every part of this run sorts after them)."""
        import pyarrow.parquet as pq

        for part in self.parts():  # oldest first: a later row wins a tie
            if part in self._scanned:
                continue
            table = pq.read_table(part, columns=["key", "status", "error_code", "error"],
                                  filesystem=self.fs)
            part_keys = table.column("key").to_pylist()
            self._scanned[part] = part_keys
            for index, (key, status, code, message) in enumerate(zip(
                    part_keys, *(table.column(c).to_pylist()
                                 for c in ("status", "error_code", "error")), strict=True)):
                current = self._winners.get(key)
                if current is None or status == "ok" or current.status != "ok":
                    self._winners[key] = _Winner(status, part, index, code, message)
        return self._winners

    # --- the workers -----------------------------------------------------------------------

    def write(self, rows: Sequence[dict[str, Any]]) -> str:
        """One batch's rows as a new part (PNG masks first, for ``--output png``)."""
        if self.output == "png":
            rows = [self._write_mask(row) for row in rows]
        name = posixpath.join(self.rows_dir, f"part-{self.run}-{uuid.uuid4().hex[:12]}.parquet")
        import pyarrow as pa

        self._put(name, _parquet(pa.Table.from_pylist(list(rows), schema=schema())))
        return name

    def _write_mask(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["mask"] is None:
            return row
        relative = row["key"] + ".png"
        self._put(posixpath.join(self.root, relative), row["mask"])
        return {**row, "mask": None, "mask_path": relative}

    def claims(self) -> "FileClaims":
        return FileClaims(self.fs, self.claims_dir)

    def _put(self, path: str, data: bytes) -> None:
        """Writes under a hidden temporary name in the same folder, then renames: on a local
        disk with ``model.atomic`` (fsynced, so a power cut leaves the old file or the new
        one), elsewhere with the filesystem's own rename (an object store's copy)."""
        if self.local:
            atomic_write_bytes(path, data)
            return
        folder, name = posixpath.split(path)
        self.fs.makedirs(folder, exist_ok=True)
        temporary = posixpath.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        self.fs.pipe_file(temporary, data)
        self.fs.mv(temporary, path)


@dataclasses.dataclass(frozen=True)
class _Winner:
    """Where a key's winning row is, and what it says."""

    status: str
    part: str
    row: int
    error_code: str | None
    error: str | None


class FileClaims:
    """``rows.Claims`` as empty files under ``DST/_claims/<run>/`` named by the keys' hash."""

    def __init__(self, fs: Any, folder: str) -> None:
        self.fs, self.folder = fs, folder

    def claim(self, keys: Sequence[str], *, alone: bool = False) -> bool:
        path = self._path(keys, alone)
        if self.fs.exists(path):
            return True
        self.fs.makedirs(self.folder, exist_ok=True)
        self.fs.pipe_file(path, "\n".join(keys).encode())
        return False

    def release(self, keys: Sequence[str], *, alone: bool = False) -> None:
        path = self._path(keys, alone)
        if self.fs.exists(path):
            self.fs.rm(path)

    def _path(self, keys: Iterable[str], alone: bool) -> str:
        digest = hashlib.sha1("\n".join(sorted(keys)).encode()).hexdigest()
        return posixpath.join(self.folder, ("image-" if alone else "batch-") + digest)


def _parquet(table: Any) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())
