"""``atrous segment-dataset`` against a real local Ray cluster (2 CPUs, a small object store)
and the painted SavedModel (known, non-trivial masks): a zoo of bad files, masks equal to
``atrous segment``'s, pool sizes 1 and 2, ``--output png``, the local engine's rows, and a
resume after ``kill -9`` of the driver.

One Ray cluster serves the file; the killed driver is its own process, joined to it.
"""

import io
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.batch import JobConfig, JobFailedError, ModelSpec, RayOptions, segment_dataset
from app.batch.sources import list_source
from app.batch.store import Store
from app.cli.main import main
from tests.conftest import REPO
from tests.images import photo_like

pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

GOOD = ["a.png", "nested/b.jpg", "nested/deeper/c.png", "rgba.png", "grey16.png", "cmyk.jpg"]
# file -> the error code its row must carry
BAD = {"corrupt.png": "corrupt_image", "empty.jpg": "unsupported_image",
       "truncated.jpg": "corrupt_image", "notes.txt": "unsupported_image",
       "huge.png": "image_too_large", "gone.png": "unreadable"}


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression bomb's header)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _jpeg(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("zoo")
    (root / "nested/deeper").mkdir(parents=True)
    photo_like(150, 100, 1).save(root / "a.png")
    (root / "nested/b.jpg").write_bytes(_jpeg(photo_like(120, 160, 2), quality=95))
    photo_like(90, 90, 3).save(root / "nested/deeper/c.png")
    photo_like(80, 60, 4).convert("RGBA").save(root / "rgba.png")
    grey = (np.asarray(photo_like(70, 50, 5).convert("L"), np.uint16) * 257)
    Image.fromarray(grey.astype(np.uint16)).save(root / "grey16.png")
    (root / "cmyk.jpg").write_bytes(_jpeg(photo_like(64, 64, 6).convert("CMYK")))
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    (root / "empty.jpg").write_bytes(b"")
    whole = _jpeg(photo_like(200, 150, 7))
    (root / "truncated.jpg").write_bytes(whole[:len(whole) // 2])
    (root / "notes.txt").write_text("not an image\n")
    (root / "huge.png").write_bytes(_png_declaring(20_000, 20_000))
    (root / "gone.png").symlink_to(root / "missing-target.png")
    (root / ".hidden.png").write_bytes(b"skipped: hidden")
    return root


@pytest.fixture(scope="module")
def ray_cluster():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20,
             log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def reference_masks(zoo: Path, tiling_saved_model: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """``atrous segment``'s PNG bytes for every good image (keyed like the rows)."""
    out = tmp_path_factory.mktemp("segment")
    assert main(["segment", *(str(zoo / key) for key in GOOD), "--model",
                 str(tiling_saved_model), "-o", str(out)]) == 0
    masks = {key: (out / (Path(key).stem + ".png")).read_bytes() for key in GOOD}
    classes = {int(c) for data in masks.values() for c in np.unique(Image.open(io.BytesIO(data)))}
    assert len(classes) >= 3, classes  # painted weights: the comparison is not trivial
    return masks


def _config(zoo: Path, dst: Path, model: Path, **kwargs) -> JobConfig:
    ray = RayOptions(workers=kwargs.pop("workers", 1), max_restarts=1)
    return JobConfig(source=str(zoo), destination=str(dst), model=ModelSpec(model=str(model)),
                     ray=ray, batch_size=kwargs.pop("batch_size", 3), progress=False, **kwargs)


def _rows(folder: Path) -> dict[str, dict]:
    table = pq.read_table(folder)  # the directory as a dataset: hidden names are skipped
    rows = table.to_pylist()
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)), sorted(keys)  # one row per image
    return {r["key"]: r for r in rows}


def _comparable(row: dict) -> dict:
    """A row without its timing (error messages hold no object addresses: equal too)."""
    return {k: v for k, v in row.items() if k not in ("ms", "runtime")}


def test_ray_pool_of_two_writes_one_row_per_image(zoo, ray_cluster, tiling_saved_model,
                                                  reference_masks, tmp_path):
    report = segment_dataset(_config(zoo, tmp_path / "dst", tiling_saved_model, engine="ray",
                                     workers=2))
    assert (report.inputs, report.ok, report.errors, report.exit_code) == (12, 6, 6, 1)
    rows = _rows(tmp_path / "dst")
    assert set(rows) == set(GOOD) | set(BAD)
    for key, code in BAD.items():
        assert (rows[key]["status"], rows[key]["error_code"]) == ("error", code), rows[key]
        assert rows[key]["error"] and rows[key]["mask"] is None
        assert not re.search(r"0x[0-9a-f]{6,}", rows[key]["error"]), rows[key]["error"]
    for key in GOOD:
        row = rows[key]
        assert row["status"] == "ok" and row["error_code"] is None
        assert row["mask"] == reference_masks[key], key  # byte for byte
        with Image.open(io.BytesIO(row["mask"])) as mask:
            assert (row["width"], row["height"]) == mask.size
            counts = np.bincount(np.asarray(mask).ravel(), minlength=256)
        assert {c["id"]: c["pixels"] for c in row["classes"]} == {
            i: int(n) for i, n in enumerate(counts) if n}
        assert row["model"] == report.model and row["ms"] > 0
    assert (tmp_path / "dst/_SUCCESS").exists()
    assert not list((tmp_path / "dst").glob(".*"))  # no temporary file left
    assert main(["segment-dataset", str(zoo), str(tmp_path / "dst"), "--engine", "local",
                 "--model", str(tiling_saved_model)]) == 2  # never over old results

    local = segment_dataset(_config(zoo, tmp_path / "local", tiling_saved_model,
                                    engine="local", batch_size=4))
    assert (local.ok, set(local.failed)) == (report.ok, set(report.failed))
    assert {k: _comparable(r) for k, r in _rows(tmp_path / "local").items()} == {
        k: _comparable(r) for k, r in rows.items()}


def test_resume_after_sigterm_and_kill_9_of_the_driver_png_output_pool_of_one(
        zoo, ray_cluster, tiling_saved_model, reference_masks, tmp_path):
    many = tmp_path / "many"
    many.mkdir()
    for i in range(40):
        photo_like(320, 240, 100 + i).save(many / f"{i:03d}.png")
    for name in ("a.png", "corrupt.png", "empty.jpg"):
        (many / name).write_bytes((zoo / name).read_bytes())
    dst = tmp_path / "dst"
    command = [sys.executable, "-m", "app.cli", "segment-dataset", str(many), str(dst),
               "--model", str(tiling_saved_model), "--address", ray_cluster, "--workers", "2",
               "--batch-size", "1", "--output", "png", "--no-progress"]
    log = tmp_path / "driver.log"

    def interrupt(sig: signal.Signals, *extra: str) -> int:
        """Runs a driver until it has written one part more, then signals it."""
        parts = dst / "_manifest"
        before = len(list(parts.glob("part-*.parquet")))
        with log.open("wb") as out:
            driver = subprocess.Popen([*command, *extra], cwd=REPO, stdout=out,
                                      stderr=subprocess.STDOUT,
                                      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
            deadline = time.monotonic() + 120
            while len(list(parts.glob("part-*.parquet"))) <= before:
                assert driver.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.01)
            driver.send_signal(sig)
            return driver.wait()

    # SIGTERM is Ctrl-C: exit 2 after the clean-up (ray.init's own handler would exit 15).
    assert interrupt(signal.SIGTERM) == 2, log.read_text()
    assert "interrupted; rerun with --resume" in log.read_text()
    interrupt(signal.SIGKILL, "--resume")
    assert not (dst / "_SUCCESS").exists()
    done_before = len(Store(str(dst), "png", "probe").ok_keys())

    report = segment_dataset(_config(many, dst, tiling_saved_model, engine="ray", workers=1,
                                     output="png", resume=True))
    assert report.skipped == done_before and report.processed == 43 - done_before > 0
    assert (report.inputs, report.ok, report.errors, report.exit_code) == (43, 41, 2, 1)
    assert set(report.failed) == {"corrupt.png", "empty.jpg"}
    rows = _rows(dst / "_manifest")
    assert len(rows) == 43 and sum(r["status"] == "ok" for r in rows.values()) == 41
    assert (dst / "a.png.png").read_bytes() == reference_masks["a.png"]
    for key, row in rows.items():
        assert row["mask"] is None
        if row["status"] == "ok":
            assert row["mask_path"] == key + ".png" and (dst / row["mask_path"]).is_file()
    assert (dst / "_SUCCESS").exists() and not (dst / "_claims").exists()
    again = segment_dataset(_config(many, dst, tiling_saved_model, engine="local",
                                    output="png", resume=True))
    assert (again.skipped, again.processed, again.ok) == (41, 2, 41)  # only errors rerun
    assert len(_rows(dst / "_manifest")) == 43


def test_sources_glob_and_manifest(zoo, tmp_path):
    assert [i.key for i in list_source(str(zoo / "nested/**/*.png"))] == ["deeper/c.png"]
    assert [i.key for i in list_source(f"file://{zoo}/*.jpg")] == ["cmyk.jpg", "empty.jpg",
                                                                   "truncated.jpg"]
    manifest = zoo.parent / "list.txt"
    manifest.write_text(f"# images\n{zoo.name}/a.png\n\n{zoo / 'nested/b.jpg'}\n")
    items = list_source(str(manifest))
    assert [i.key for i in items] == sorted([f"{zoo.name}/a.png",
                                             str(zoo / "nested/b.jpg")[1:]])
    assert all(Path(i.uri).is_file() for i in items)
    manifest.write_text("../escape.png\n")
    with pytest.raises(ValueError, match="climbs out"):
        list_source(str(manifest))
    with pytest.raises(ValueError, match="no such"):
        list_source(str(tmp_path / "nothing-here"))


def test_a_job_whose_workers_cannot_start_exits_2(zoo, ray_cluster, tmp_path, capsys):
    not_a_model = tmp_path / "model"
    (not_a_model / "assets.extra").mkdir(parents=True)
    (not_a_model / "assets.extra/atrous.json").write_text('{"format": "savedmodel"}')
    with pytest.raises(JobFailedError) as failed:
        segment_dataset(_config(zoo, tmp_path / "dst", not_a_model, engine="ray"))
    assert failed.value.report.exit_code == 2 and failed.value.report.ok == 0
    assert len(failed.value.report.missing) == 12
    assert not (tmp_path / "dst/_SUCCESS").exists()
    assert (tmp_path / "dst/_summary.json").exists()


def test_an_image_that_killed_workers_twice_is_quarantined(zoo, tiling_saved_model, tmp_path):
    """Claims left behind are what a dead worker leaves: the batch's (it died on the batch),
    then b.jpg's own (it died again on b.jpg alone). The retry marks b.jpg only."""
    import fsspec

    from app.batch.rows import BatchSegmenter, read_rows
    from app.batch.store import FileClaims

    claims = FileClaims(fsspec.filesystem("file"), str(tmp_path / "claims"))
    segment = BatchSegmenter(ModelSpec(model=str(tiling_saved_model)), claims)
    items = [{"key": key, "uri": str(zoo / key)} for key in ("a.png", "nested/b.jpg")]
    assert not claims.claim(["a.png", "nested/b.jpg"])
    assert not claims.claim(["nested/b.jpg"], alone=True)
    rows = {r["key"]: r for r in segment(read_rows(items, max_bytes=2**20))}
    assert rows["a.png"]["status"] == "ok"
    assert (rows["nested/b.jpg"]["status"], rows["nested/b.jpg"]["error_code"]) == (
        "error", "worker_crashed")
    assert list((tmp_path / "claims").iterdir()) == []  # every claim released
    rows = {r["key"]: r for r in segment(read_rows(items, max_bytes=2**20))}
    assert {r["status"] for r in rows.values()} == {"ok"}  # a fresh batch runs as usual
    # A batch of one that killed a worker once is run again (alone), not yet quarantined.
    assert not claims.claim(["a.png"])
    (row,) = segment(read_rows(items[:1], max_bytes=2**20))
    assert row["status"] == "ok"


def test_a_batch_that_fails_as_a_whole_marks_only_its_culprit(zoo, tiling_saved_model,
                                                             reference_masks, tmp_path):
    """Every model call holding b.jpg raises (the test fault): its batch is run again image by
    image, b.jpg alone is an error row, and its batch-mates get their real masks."""
    import fsspec

    from app.batch.rows import BatchSegmenter, read_rows
    from app.batch.store import FileClaims

    claims = FileClaims(fsspec.filesystem("file"), str(tmp_path / "claims"))
    spec = ModelSpec(model=str(tiling_saved_model), test_fault="raise@nested/b.jpg")
    segment = BatchSegmenter(spec, claims)
    keys = ["a.png", "corrupt.png", "nested/b.jpg", "nested/deeper/c.png"]
    rows = {r["key"]: r for r in segment(read_rows(
        [{"key": key, "uri": str(zoo / key)} for key in keys], max_bytes=2**20))}
    assert list(rows) == keys
    culprit = rows.pop("nested/b.jpg")
    assert (culprit["status"], culprit["error_code"]) == ("error", "inference_failed")
    assert culprit["error"].startswith("InjectedFault: injected fault") and culprit["mask"] is None
    assert rows.pop("corrupt.png")["error_code"] == "corrupt_image"  # never reached the model
    for key, row in rows.items():
        assert row["status"] == "ok" and row["mask"] == reference_masks[key], key
    assert list((tmp_path / "claims").iterdir()) == []


def test_an_image_that_kills_its_actor_is_an_error_row_not_a_loop(ray_cluster,
                                                                  tiling_saved_model, tmp_path):
    """Under real Ray, the actor process exits (os._exit) whenever its model call holds
    b.png: Ray restarts it and retries the batch, which then runs image by image; b.png kills
    it once more, and the next retry marks it ``worker_crashed``. The job ends (exit 1)."""
    source = tmp_path / "src"
    source.mkdir()
    for i, name in enumerate(("a.png", "b.png", "c.png")):
        photo_like(64, 48, 20 + i).save(source / name)
    config = JobConfig(
        source=str(source), destination=str(tmp_path / "dst"), engine="ray",
        model=ModelSpec(model=str(tiling_saved_model), test_fault="exit@b.png"),
        ray=RayOptions(workers=1, max_restarts=2), batch_size=3, progress=False)
    report = segment_dataset(config)
    assert (report.ok, set(report.failed), report.exit_code) == (2, {"b.png"}, 1), report
    assert report.failed["b.png"][0] == "worker_crashed"
    rows = _rows(tmp_path / "dst")
    assert {k: r["status"] for k, r in rows.items()} == {"a.png": "ok", "b.png": "error",
                                                         "c.png": "ok"}
    assert (tmp_path / "dst/_SUCCESS").exists() and not (tmp_path / "dst/_claims").exists()


def test_store_resume_removes_temporaries_and_finalise_rewrites_only_superseded_parts(tmp_path):
    """What a killed run leaves (a part's and a mask's temporaries) is gone on resume, other
    hidden files stay; finalise keeps one row per key and leaves whole parts untouched."""
    from app.batch.rows import error_row

    dst = tmp_path / "dst"
    first = Store(str(dst), "png", "20261204T000000-aaaaaaaa")
    first.open(resume=False)
    ok = {"key": "a/x.jpg", "uri": "x", "status": "ok", "error_code": None, "error": None,
          "width": 1, "height": 1, "mask": b"png", "mask_path": None, "classes": [],
          "model": "m", "runtime": "r", "ms": 1.0}
    kept = first.write([{**ok, "key": "b.jpg"}])
    superseded = first.write([error_row({"key": "a/x.jpg", "uri": "x"}, "unreadable", "gone"),
                              error_row({"key": "c.jpg", "uri": "c"}, "unreadable", "gone")])
    (dst / "a").mkdir()
    (dst / "a/.x.jpg.png.k2j3h4_x").write_bytes(b"half a mask")  # model.atomic's name
    (dst / "_manifest/.part-1.parquet.0123abcd.tmp").write_bytes(b"half a part")
    (dst / "a/.keep").write_bytes(b"")
    kept_at = Path(kept).stat().st_mtime_ns

    second = Store(str(dst), "png", "20261204T000100-bbbbbbbb")
    second.open(resume=True)
    hidden = sorted(p.name for p in dst.rglob(".*"))
    assert hidden == [".keep"], hidden
    assert second.ok_keys() == {"b.jpg"}
    second.write([ok])  # a/x.jpg, ok this time
    tally = second.finalise(["a/x.jpg", "b.jpg", "c.jpg"])
    assert (tally.ok, set(tally.errors), tally.missing, tally.superseded) == (2, {"c.jpg"}, (), 1)
    rows = _rows(dst / "_manifest")
    assert {k: r["status"] for k, r in rows.items()} == {"a/x.jpg": "ok", "b.jpg": "ok",
                                                         "c.jpg": "error"}
    assert (dst / "a/x.jpg.png").read_bytes() == b"png"
    assert Path(kept).stat().st_mtime_ns == kept_at  # no superseded row: not rewritten
    assert Path(superseded).exists()  # rewritten in place with c.jpg alone


def test_docs_name_every_error_code_and_flag():
    from app.batch import ERROR_CODES
    from app.cli.main import build_parser

    text = (REPO / "docs/batch.md").read_text()
    for code in ERROR_CODES:
        assert f"| `{code}` |" in text, code
    parser = build_parser()._subparsers._group_actions[0].choices["segment-dataset"]
    network = {"--backbone", "--output-stride", "--num-classes", "--head", "--input-size",
               "--precision", "--help", "-h"}
    flags = {s for a in parser._actions for s in a.option_strings} - network
    readme = (REPO / "README.md").read_text()
    for flag in flags:
        assert f"`{flag}" in text or f"{flag} " in text or flag in readme, flag
