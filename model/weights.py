"""Fetching the official slim ImageNet checkpoints into a local cache.

``fetch_weights("resnet_v1_101")`` downloads the published tarball (or copies a local
file / ``file://`` URL), shows a progress bar, checks an optional SHA-256, unpacks it
safely and verifies that the checkpoint inside really holds that backbone: every
block and unit of its table, read from the checkpoint's variable names.
"""

import hashlib
import json
import logging
import re
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from model.nets.backbones import get_backbone

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path("~/.cache/atrous/weights")
_CHUNK = 1 << 20


class WeightsError(RuntimeError):
    """A download that failed, or an archive that is not the checkpoint it claims to be."""


def _download(source: str, target: Path, *, progress: bool) -> None:
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme in ("", "file"):
        path = Path(urllib.parse.unquote(parsed.path) if parsed.scheme else source).expanduser()
        if not path.is_file():
            raise WeightsError(f"{path} does not exist")
        shutil.copyfile(path, target)
        return
    if parsed.scheme not in ("http", "https"):
        raise WeightsError(f"unsupported URL scheme {parsed.scheme!r} in {source}")
    try:
        with urllib.request.urlopen(source, timeout=60) as response, open(target, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=Path(parsed.path).name,
                      disable=not progress) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
        if total is not None and target.stat().st_size != total:
            raise WeightsError(f"{source}: got {target.stat().st_size} of {total} bytes")
    except OSError as e:  # URLError, HTTPError, timeouts, refused connections
        raise WeightsError(f"cannot download {source}: {e}") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checkpoint(checkpoint: str, backbone: str) -> None:
    """Checks that ``checkpoint`` holds every block and unit of ``backbone``'s table."""
    from model.checkpoints import read_variable_shapes

    spec = get_backbone(backbone)
    names = read_variable_shapes(checkpoint)
    found = {(int(b), int(u)) for b, u in (
        m.groups() for m in (re.match(rf"{backbone}/block(\d+)/unit_(\d+)/", n) for n in names)
        if m)}
    wanted = {(b + 1, u + 1) for b, units in enumerate(spec.units) for u in range(units)}
    if found != wanted or f"{backbone}/conv1/weights" not in names:
        raise WeightsError(f"{checkpoint} is not a {backbone} checkpoint: expected "
                           f"{len(wanted)} units under {backbone}/, found {len(found)}")


def fetch_weights(backbone: str, *, source: str | None = None,
                  cache_dir: str | Path = DEFAULT_CACHE, sha256: str | None = None,
                  force: bool = False, progress: bool = True) -> str:
    """Downloads, verifies and unpacks ``backbone``'s ImageNet checkpoint.

    Args:
        backbone: registry name, e.g. ``resnet_v1_101``.
        source: URL, ``file://`` URL or local path; defaults to the official tarball.
        cache_dir: where ``<backbone>/`` is created.
        sha256: expected digest of the tarball, checked when given.
        force: download again even if the cache holds a verified copy.
        progress: show a progress bar.

    Returns:
        the checkpoint path, ready for ``--checkpoint``.
    """
    spec = get_backbone(backbone)
    source = source or spec.imagenet_url
    if source is None:
        raise WeightsError(f"no official ImageNet checkpoint was published for {backbone}; "
                           "pass --url with one of your own")
    target = Path(cache_dir).expanduser() / backbone
    record = target / "SOURCE.json"
    if record.is_file() and not force:
        checkpoint = json.loads(record.read_text())["checkpoint"]
        log.info("using cached %s", checkpoint)
        return checkpoint
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{backbone}.") as tmp:
        archive = Path(tmp) / "weights.tar.gz"
        _download(source, archive, progress=progress)
        digest = _sha256(archive)
        if sha256 and digest != sha256.lower():
            raise WeightsError(f"SHA-256 mismatch for {source}: expected {sha256}, got {digest}")
        unpacked = Path(tmp) / backbone
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(unpacked, filter="data")  # no absolute paths, links or ../
        except (tarfile.TarError, OSError, EOFError) as e:
            raise WeightsError(f"{source} is not a readable tar archive: {e}") from None
        candidates = sorted(unpacked.rglob(f"{backbone}.ckpt")) + sorted(
            p.with_suffix("") for p in unpacked.rglob(f"{backbone}.ckpt.index"))
        if not candidates:
            raise WeightsError(f"{source} holds no {backbone}.ckpt")
        relative = candidates[0].relative_to(unpacked)
        verify_checkpoint(str(candidates[0]), backbone)
        (unpacked / "SOURCE.json").write_text(json.dumps({
            "backbone": backbone, "source": source, "sha256": digest,
            "checkpoint": str(target / relative)}, indent=2))
        if target.exists():
            shutil.rmtree(target)
        unpacked.rename(target)
    log.info("fetched %s into %s", backbone, target)
    return str(target / relative)
