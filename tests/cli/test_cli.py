"""The atrous command: export, offline segment, fetch-weights (against a local HTTP
server serving a tarball made here) and the bench harness."""

import functools
import http.server
import io
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.cli.main import main
from model import bench
from model.config import ModelConfig
from model.inference.contract import ModelMetadata
from model.weights import WeightsError, fetch_weights
from tests.checkpoint_factory import write_checkpoint

SMALL = ["--backbone", "cifar_resnet_20", "--input-size", "65"]


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "saved"
    assert main(["export", *SMALL, "--out", str(out)]) == 0
    return out


def test_export_writes_saved_model_and_metadata(small_model, tmp_path, capsys):
    assert main(["export", *SMALL, "--out", str(tmp_path / "again")]) == 0
    assert "warning: no checkpoint: exporting cifar_resnet_20 with random weights" in (
        capsys.readouterr().err)
    metadata = ModelMetadata.read(small_model)
    assert metadata.backbone == "cifar_resnet_20" and metadata.input_size == 65
    assert not metadata.trained
    assert main(["export", *SMALL, "--out", str(small_model)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_export_with_mismatched_checkpoint_is_a_clean_error(tmp_path, capsys):
    ckpt = write_checkpoint(ModelConfig(backbone="cifar_resnet_29", input_size=65),
                            tmp_path / "c29.ckpt")
    code = main(["export", *SMALL, "--checkpoint", ckpt, "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "does not match cifar_resnet_20" in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("args, message", [
    (["--backbone", "resnet_v9"], "unknown backbone 'resnet_v9'"),
    (["--input-size", "100"], "input_size must be 32k+1"),
])
def test_export_rejects_bad_configs(tmp_path, capsys, args, message):
    assert main(["export", "--out", str(tmp_path / "m"), *args]) == 2
    assert message in capsys.readouterr().err


def test_segment_writes_palette_pngs_and_reports_bad_files(small_model, tmp_path, capsys):
    good = tmp_path / "wide.png"
    Image.new("RGB", (90, 40), (200, 30, 30)).save(good)
    gray = tmp_path / "gray.jpg"
    Image.new("L", (30, 70), 120).save(gray)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    missing = tmp_path / "missing.png"
    out = tmp_path / "masks"
    code = main(["segment", str(good), str(bad), str(gray), str(missing), "--model",
                 str(small_model), "-o", str(out), "--batch-size", "2"])
    captured = capsys.readouterr()
    assert code == 1
    assert f"error: {bad}" in captured.err and f"error: {missing}" in captured.err
    assert "segmented 2 of 4 images" in captured.out
    for name, size in (("wide.png", (90, 40)), ("gray.png", (30, 70))):
        with Image.open(out / name) as mask:
            mask.load()
        assert mask.mode == "P" and mask.size == size
        assert np.asarray(mask).max() < 21
        assert mask.getpalette()[3:6] == [128, 0, 0]  # VOC colour of class 1


def test_segment_overlay_is_an_image_of_the_input_size(small_model, tmp_path):
    image = tmp_path / "tall.png"
    Image.new("RGBA", (20, 50), (0, 0, 255, 128)).save(image)
    assert main(["segment", str(image), "--model", str(small_model), "-o", str(tmp_path),
                 "--format", "overlay"]) == 0
    with Image.open(tmp_path / "tall.jpg") as overlay:
        assert overlay.format == "JPEG" and overlay.size == (20, 50)


# --- fetch-weights against a local HTTP server -------------------------------------------

@pytest.fixture(scope="module")
def imagenet_tarball(tmp_path_factory):
    """A tarball laid out like resnet_v1_50_2016_08_28.tar.gz: one V1 resnet_v1_50.ckpt."""
    root = tmp_path_factory.mktemp("tarball")
    config = ModelConfig(backbone="resnet_v1_50", input_size=33)
    # Zero weights compress to almost nothing; the names and shapes are the official ones.
    ckpt = write_checkpoint(config, root / "ckpt" / "resnet_v1_50.ckpt", layout="slim",
                            version="V1", imagenet_classes=1000,
                            values=lambda name, shape: np.zeros(shape, np.float32))
    archive = root / "resnet_v1_50_2016_08_28.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(ckpt, arcname="resnet_v1_50.ckpt")
    return archive


@pytest.fixture
def http_server(imagenet_tarball):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(imagenet_tarball.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_fetch_weights_over_http_then_export(http_server, imagenet_tarball, tmp_path, capsys):
    url = f"{http_server}/{imagenet_tarball.name}"
    cache = tmp_path / "cache"
    assert main(["fetch-weights", "resnet_v1_50", "--url", url, "--cache-dir", str(cache)]) == 0
    captured = capsys.readouterr()
    checkpoint = captured.out.strip().splitlines()[-1]
    assert checkpoint == str(cache / "resnet_v1_50" / "resnet_v1_50.ckpt")
    assert "100%" in captured.err  # the progress bar ran to the end
    # The ImageNet checkpoint initialises the backbone; the head stays untrained.
    out = tmp_path / "saved"
    assert main(["export", "--backbone", "resnet_v1_50", "--input-size", "33",
                 "--checkpoint", checkpoint, "--out", str(out)]) == 0
    assert ModelMetadata.read(out).trained is False
    assert "has no segmentation head: the head is randomly initialised" in (
        capsys.readouterr().err)
    # A second fetch is served from the cache, without the network.
    assert fetch_weights("resnet_v1_50", source="http://127.0.0.1:9/unreachable",
                         cache_dir=cache, progress=False) == checkpoint


@pytest.mark.parametrize("form", ["path", "file-url"])
def test_fetch_weights_from_local_file(imagenet_tarball, tmp_path, form):
    source = str(imagenet_tarball) if form == "path" else imagenet_tarball.as_uri()
    path = fetch_weights("resnet_v1_50", source=source, cache_dir=tmp_path, progress=False)
    assert Path(path).is_file()


def test_fetch_weights_failures_are_clean(imagenet_tarball, tmp_path, capsys):
    cases = [
        (["resnet_v1_50", "--url", str(imagenet_tarball), "--sha256", "0" * 64],
         "SHA-256 mismatch"),
        (["resnet_v1_101", "--url", str(imagenet_tarball)], "holds no resnet_v1_101.ckpt"),
        (["resnet_v1_200"], "no official ImageNet checkpoint was published for resnet_v1_200"),
        (["resnet_v1_50", "--url", "http://127.0.0.1:9/x.tar.gz"], "cannot download"),
        (["resnet_v1_50", "--url", str(tmp_path / "nope.tar.gz")], "does not exist"),
    ]
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"\x1f\x8b not really gzip")
    cases.append((["resnet_v1_50", "--url", str(junk)], "is not a readable tar archive"))
    for args, message in cases:
        assert main(["fetch-weights", *args, "--cache-dir", str(tmp_path / "c")]) == 1
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err


def test_fetch_weights_rejects_a_checkpoint_of_another_depth(tmp_path):
    """A tarball whose ckpt is named resnet_v1_50 but holds a 101-layer table."""
    ckpt = write_checkpoint(ModelConfig(backbone="cifar_resnet_20", input_size=33),
                            tmp_path / "resnet_v1_50.ckpt", version="V1")
    archive = tmp_path / "fake.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(ckpt, arcname="resnet_v1_50.ckpt")
    with pytest.raises(WeightsError, match="is not a resnet_v1_50 checkpoint"):
        fetch_weights("resnet_v1_50", source=str(archive), cache_dir=tmp_path / "c",
                      progress=False)


def test_tarball_with_escaping_paths_is_refused(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../../escaped.ckpt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(WeightsError, match="not a readable tar archive"):
        fetch_weights("resnet_v1_50", source=str(archive), cache_dir=tmp_path / "c",
                      progress=False)
    assert not (tmp_path / "escaped.ckpt").exists()


def test_bench_harness_times_the_segmentation_graph():
    result = bench.time_forward("segmentation", 1, num_batches=2, burn_in=1, progress=False)
    assert result.backbone == "resnet_v1_101" and result.image_size == 513
    assert result.num_batches == 2 and result.mean_s > 0 and result.sd_s >= 0
    assert result.images_per_s == pytest.approx(1 / result.mean_s)
    assert result.row().startswith("| segmentation | resnet_v1_101 | 513 | 1 | fp32 | off |")


def test_segment_through_a_server_matches_the_offline_command(small_model, tmp_path,
                                                              server_factory):
    server = server_factory({"ATROUS_MODEL": str(small_model), "ATROUS_MAX_BATCH_SIZE": "2"})
    rng = np.random.default_rng(8)
    paths = []
    for i, size in enumerate([(80, 50), (33, 90), (65, 65)]):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    offline, remote = tmp_path / "offline", tmp_path / "remote"
    assert main(["segment", *paths, "--model", str(small_model), "-o", str(offline)]) == 0
    assert main(["segment", *paths, "--url", server.url, "-o", str(remote)]) == 0
    for i in range(3):
        with Image.open(offline / f"img{i}.png") as want, Image.open(remote / f"img{i}.png") as got:
            assert got.mode == "P" and got.size == want.size
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_serve_has_one_option_per_setting_and_validates_them(capsys):
    from app.cli.main import build_parser
    from app.settings import Settings

    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    options = {option for action in serve._actions for option in action.option_strings}
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in options, name
    assert main(["serve", "--port", "eighty"]) == 2
    err = capsys.readouterr().err
    assert "invalid settings" in err and "port" in err and "Traceback" not in err
    assert main(["serve", "--max-batch-size", "8", "--max-queue", "4"]) == 2
    assert "max_queue (4) must be at least max_batch_size (8)" in capsys.readouterr().err


def test_atrous_serve_runs_the_server_with_its_options_and_drains_on_sigterm(small_model,
                                                                             server_factory):
    import httpx

    command = [sys.executable, "-m", "app.cli", "serve", "--model", str(small_model),
               "--port", "{port}", "--max-batch-size", "3", "--no-gpu-memory-growth"]
    server = server_factory({}, command=command)
    info = httpx.get(server.url + "/v1/model").json()
    assert info["batching"]["max_batch_size"] == 3 and info["backbone"] == "cifar_resnet_20"
    assert server.stop() == 0, server.log
