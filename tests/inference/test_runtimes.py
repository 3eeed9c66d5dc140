"""OpenVINO and ONNX Runtime beside TensorFlow: parity, INT8, choice, errors, the server.

One hand-set "colour routing" cifar_resnet_20 (129 x 129) is exported once as a
SavedModel, then converted by ``atrous export --format openvino|onnx`` (fp32 and INT8):
its masks are known and its logits do not tie, so the runtimes must agree pixel for
pixel with the SavedModel (>= 99.9 %), and INT8 nearly so (>= 98 %).
"""

import asyncio
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from app.batcher import Batcher
from app.cli.main import main
from model.config import ModelConfig
from model.inference import formats, runtimes
from model.inference.contract import ModelMetadata
from model.inference.pipeline import segment_images
from model.inference.runtimes import RuntimeUnavailableError, choose_runtime, load_runtime
from tests import checkpoint_factory
from tests.images import agreement, photo_like

CONFIG = ModelConfig(backbone="cifar_resnet_20", input_size=129)


def routing_values(name: str, shape: list[int]) -> np.ndarray | None:
    """The colour-routing weights, with the stem scaled for cifar's [-1, 1] inputs so that
    its features are the mean-subtracted colours the routing head expects."""
    value = checkpoint_factory.color_routing_value(name, shape)
    if value is not None and name.endswith("conv1/weights") and name.count("/") == 2:
        value = value * 127.5
    return value


IMAGES = [photo_like(w, h, seed) for seed, (w, h) in
          enumerate([(160, 120), (129, 129), (90, 200), (300, 170), (64, 64), (200, 150)])]


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """savedmodel, openvino, onnx, openvino-int8 and onnx-int8 exports of the routed network."""
    root = tmp_path_factory.mktemp("runtimes")
    checkpoint = checkpoint_factory.write_checkpoint(CONFIG, root / "ckpt" / "routed",
                                                     values=routing_values)
    calibration = root / "calibration"
    calibration.mkdir()
    for i in range(8):
        photo_like(160, 120, 100 + i).save(calibration / f"{i}.png")
    small = ["--backbone", CONFIG.backbone, "--input-size", str(CONFIG.input_size)]
    paths = {name: root / name for name in
             ("savedmodel", "openvino", "onnx", "openvino-int8", "onnx-int8")}
    saved = ["--model", str(paths["savedmodel"])]
    calibrate = ["--int8", "--calibration", str(calibration)]
    assert main(["export", *small, "--checkpoint", checkpoint,
                 "--out", str(paths["savedmodel"])]) == 0
    # From the checkpoint: the SavedModel is made on the way, then converted.
    assert main(["export", *small, "--checkpoint", checkpoint, "--format", "openvino",
                 "--out", str(paths["openvino"])]) == 0
    assert main(["export", *saved, "--format", "onnx", "--out", str(paths["onnx"])]) == 0
    # INT8 from the fp32 exports: quantized without converting again.
    for format in ("openvino", "onnx"):
        assert main(["export", "--model", str(paths[format]), "--format", format, *calibrate,
                     "--out", str(paths[f"{format}-int8"])]) == 0
    return paths


@pytest.fixture(scope="module")
def reference(exports) -> list[np.ndarray]:
    """The SavedModel's masks, through TensorFlow: what every runtime must reproduce."""
    masks = segment_images(load_runtime(exports["savedmodel"], "tensorflow"), IMAGES)
    # Not a degenerate model: the routed colours give several classes in these images.
    assert len(set(np.unique(np.concatenate([m.ravel() for m in masks])))) >= 3
    return masks


def test_every_export_has_the_metadata_beside_it(exports):
    for name, path in exports.items():
        metadata = ModelMetadata.read(path)
        assert metadata.format == name.split("-")[0] == formats.detect_format(path)
        assert metadata.precision == ("int8" if name.endswith("int8") else "fp32")
        assert metadata.trained and metadata.backbone == "cifar_resnet_20"


@pytest.mark.parametrize(("runtime", "export"), [("openvino", "openvino"),
                                                 ("openvino", "savedmodel"),
                                                 ("onnxruntime", "onnx")])
def test_fp32_runtimes_give_the_saved_models_labels(exports, reference, runtime, export):
    segmenter = load_runtime(exports[export], runtime, warmup_batch_sizes=[1, 2],
                             inference_precision="fp32")
    assert (segmenter.runtime, segmenter.metadata.input_size) == (runtime, 129)
    assert segmenter.inference_precision.name == "fp32"
    assert segmenter.runtime_version[0].isdigit() and segmenter.device.startswith("CPU")
    assert MemoryError in segmenter.oom_errors
    if runtime == "onnxruntime":  # idle threads leave the cores to the host path
        options = segmenter._session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    masks = segment_images(segmenter, IMAGES)
    assert agreement(masks, reference) >= 0.999
    # One batch or image by image: the same labels.
    single = [segment_images(segmenter, [image])[0] for image in IMAGES[:2]]
    assert agreement(single, masks[:2]) == 1.0


@pytest.mark.parametrize("export", ["savedmodel", "openvino", "onnx", "openvino-int8"])
def test_openvino_gives_the_saved_models_probabilities(exports, export):
    """OpenVINO's probabilities (a softmax it adds over the labels' logits; an ONNX export's
    NCHW logits come back classes last) match TensorFlow's probabilities signature inside
    the image, and their argmax is the labels; tiling, scales and confidences use them."""
    from model.inference.preprocessing import letterbox

    tensorflow = load_runtime(exports["savedmodel"], "tensorflow")
    segmenter = load_runtime(exports[export], "openvino", warmup_batch_sizes=[1],
                             inference_precision="fp32")
    assert segmenter.has_probabilities
    boxed = [letterbox(image, 129) for image in IMAGES[:3]]
    images = np.stack([canvas for canvas, _ in boxed])
    sizes = np.array([valid for _, valid in boxed], np.int32)
    got, want = segmenter.probabilities(images, sizes), tensorflow.probabilities(images, sizes)
    assert got.shape == want.shape == (3, 129, 129, 21) and got.dtype == np.float32
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    inside = np.zeros(got.shape[:3], bool)
    for i, (height, width) in enumerate(sizes):
        inside[i, :height, :width] = True
    error = np.abs(got - want).max(-1)[inside]
    if export.endswith("int8"):  # close on the whole, a few pixels moved near class edges
        assert error.mean() <= 0.01
    else:
        assert error.max() <= 1e-4
    labels = segmenter(images, sizes)
    assert (got.argmax(-1) == labels)[inside].mean() >= 0.999


@pytest.mark.parametrize(("runtime", "export"), [("openvino", "openvino-int8"),
                                                 ("onnxruntime", "onnx-int8")])
def test_int8_exports_keep_98_percent_of_the_labels(exports, reference, runtime, export):
    segmenter = load_runtime(exports[export], runtime)
    assert segmenter.metadata.precision == "int8"
    assert agreement(segment_images(segmenter, IMAGES), reference) >= 0.98


def test_auto_takes_the_measured_order_and_logs_it(exports, caplog, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # this test is about the CPU choice
    caplog.set_level("INFO")
    segmenter = load_runtime(exports["openvino"])
    assert segmenter.runtime == "openvino"
    assert "runtime auto: openvino for a openvino export on the CPU" in caplog.text
    for format, order in runtimes.CPU_PREFERENCE.items():
        assert choose_runtime(format, gpu=False) == order[0]
    # The default export on a CPU: OpenVINO (a core dependency), the measured winner.  Loaded
    # in this process again: a later SIGTERM-resume training test in the same worker used to
    # segfault after it (tests/inference/test_signal_stack.py has the cause and the guards).
    assert choose_runtime(formats.SAVEDMODEL, gpu=False) == "openvino"
    saved = load_runtime(exports["savedmodel"])
    assert saved.runtime == "openvino" and saved.has_probabilities
    # A GPU: TensorFlow for a SavedModel (OpenVINO's CPU plugin would leave it idle).
    assert choose_runtime(formats.SAVEDMODEL, gpu=True) == "tensorflow"


def test_a_missing_runtime_package_names_the_pip_extra(exports, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(RuntimeUnavailableError, match=r"pip install 'atrous\[onnx\]'"):
        load_runtime(exports["onnx"], "onnxruntime")
    monkeypatch.setitem(sys.modules, "openvino", None)
    # auto falls back to what is installed, and says what to install when nothing is.
    with pytest.raises(RuntimeUnavailableError, match=r"atrous\[openvino\]"):
        load_runtime(exports["openvino"])
    assert choose_runtime(formats.SAVEDMODEL, gpu=False) == "tensorflow"


def test_a_runtime_that_cannot_read_the_format_says_what_to_export(exports):
    with pytest.raises(RuntimeUnavailableError, match="--format onnx"):
        load_runtime(exports["savedmodel"], "onnxruntime")
    with pytest.raises(RuntimeUnavailableError, match="cannot load a onnx export"):
        load_runtime(exports["onnx"], "tensorflow")
    with pytest.raises(ValueError, match="holds no exported model"):
        load_runtime(exports["savedmodel"] / "variables", "openvino")


def test_export_refuses_int8_without_calibration_or_for_a_saved_model(exports, tmp_path,
                                                                      capsys):
    source = ["--model", str(exports["savedmodel"])]
    assert main(["export", *source, "--format", "openvino", "--int8",
                 "--out", str(tmp_path / "a")]) == 2
    assert "--calibration" in capsys.readouterr().err
    assert main(["export", "--format", "savedmodel", "--int8", "--out", str(tmp_path / "b")]) == 2
    assert "--format openvino or onnx" in capsys.readouterr().err
    assert main(["export", *source, "--format", "onnx", "--int8", "--calibration",
                 str(tmp_path), "--out", str(tmp_path / "c")]) == 2
    assert "no calibration images" in capsys.readouterr().err
    assert main(["export", "--model", str(exports["onnx"]), "--format", "openvino",
                 "--out", str(tmp_path / "d")]) == 2
    assert "is a onnx export: convert a SavedModel" in capsys.readouterr().err
    assert not any(p.name.startswith((".a", ".c", ".d", "a", "c", "d"))
                   for p in tmp_path.iterdir())


def test_the_batcher_splits_an_oom_batch_the_same_with_any_runtime(exports, reference):
    """A runtime's oom_errors drive the split: an over-large batch still gets every label."""
    segmenter = load_runtime(exports["onnx"], "onnxruntime")
    calls: list[int] = []

    def model(images: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        calls.append(len(images))
        if len(images) > 1:
            raise MemoryError("batch too big")
        return segmenter(images, sizes)

    from model.inference.preprocessing import letterbox

    async def run() -> list[np.ndarray]:
        batcher = Batcher(model, max_batch_size=4, max_delay_s=0.2, max_queue=8,
                          oom_errors=segmenter.oom_errors)
        await batcher.start()
        try:
            boxed = [letterbox(image, 129) for image in IMAGES[:4]]
            results = await asyncio.gather(*(batcher.submit(c, v, timeout=60) for c, v in boxed))
        finally:
            await batcher.stop(timeout=5)
        return [r.labels for r in results]

    labels = asyncio.run(run())
    assert calls[0] == 4 and calls.count(1) == 4
    want = segmenter(np.stack([letterbox(i, 129)[0] for i in IMAGES[:4]]),
                     np.array([letterbox(i, 129)[1] for i in IMAGES[:4]], np.int32))
    np.testing.assert_array_equal(np.stack(labels), want)


def test_segment_and_bench_take_a_runtime(exports, reference, tmp_path, capsys):
    image = tmp_path / "photo.png"
    IMAGES[0].save(image)
    assert main(["segment", str(image), "--model", str(exports["openvino"]), "--runtime",
                 "openvino", "-o", str(tmp_path / "masks")]) == 0
    assert "runtime: openvino" in capsys.readouterr().err
    mask = np.asarray(Image.open(tmp_path / "masks" / "photo.png"))
    assert (mask == reference[0]).mean() >= 0.999
    assert main(["bench", "--model", str(exports["onnx"]), "--runtime", "onnxruntime",
                 "--batch-sizes", "1,2", "--batches", "2", "--burn-in", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines()
            if line.startswith("| onnxruntime")]
    assert len(rows) == 2 and "| onnx | fp32 | cifar_resnet_20 | 129 | 2 |" in rows[1]


def test_eval_scores_any_export_through_its_runtime(exports, tmp_path, capsys):
    """``atrous eval --checkpoint`` takes an OpenVINO or ONNX export (fp32 or INT8) like a
    SavedModel: the same pipeline, the runtime asked for, and that runtime in the report."""
    voc = tmp_path / "voc"
    assert main(["data", "synthetic", str(voc), "--train", "1", "--val", "3", "--size", "96",
                 "--seed", "5"]) == 0
    masks, reports = {}, {}
    for export, runtime in [("savedmodel", "tensorflow"), ("onnx", "onnxruntime"),
                            ("openvino-int8", "openvino")]:
        out, report = tmp_path / export, tmp_path / f"{export}.json"
        assert main(["eval", "--data", str(voc), "--checkpoint", str(exports[export]),
                     "--runtime", runtime, "--save-predictions", str(out),
                     "--json", str(report)]) == 0
        assert f"on {runtime} " in capsys.readouterr().out
        reports[export] = json.loads(report.read_text())
        masks[export] = [np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))]
    assert len(masks["savedmodel"]) == 3
    assert len(np.unique(np.concatenate([m.ravel() for m in masks["savedmodel"]]))) >= 2
    assert reports["onnx"]["model"] == {"format": "onnx", "precision": "fp32",
                                        "runtime": "onnxruntime", "inference_precision": "fp32",
                                        "runtime_version": reports["onnx"]["model"][
                                            "runtime_version"]}
    assert reports["openvino-int8"]["model"]["precision"] == "int8"
    assert agreement(masks["onnx"], masks["savedmodel"]) >= 0.999
    assert agreement(masks["openvino-int8"], masks["savedmodel"]) >= 0.98
    assert reports["onnx"]["miou"] == pytest.approx(reports["savedmodel"]["miou"], abs=0.01)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize(("runtime", "export"), [("onnxruntime", "onnx"),
                                                 ("openvino", "openvino-int8")])
def test_a_server_on_another_runtime_batches_warms_up_and_reports_it(
        server_factory, exports, reference, runtime, export):
    server = server_factory({"ATROUS_MODEL": str(exports[export]), "ATROUS_RUNTIME": runtime,
                             "ATROUS_MAX_BATCH_SIZE": "3", "ATROUS_MAX_BATCH_DELAY_MS": "300"})
    info = httpx.get(server.url + "/v1/model").json()
    assert (info["runtime"], info["format"]) == (runtime, export.split("-")[0]), info
    assert info["runtime_version"][0].isdigit() and info["batching"]["max_batch_size"] == 3
    assert "warming up batch sizes 1..3" in server.log and f"with {runtime}" in server.log

    async def segment_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/segment", content=png(image))
                                          for image in IMAGES[:3]))

    start = time.monotonic()
    responses = asyncio.run(segment_all())
    assert time.monotonic() - start < 10  # warmed: no compile on the first batch
    assert [r.status_code for r in responses] == [200] * 3, responses[0].text
    masks = [np.asarray(Image.open(io.BytesIO(r.content))) for r in responses]
    floor = 0.98 if export.endswith("int8") else 0.999
    assert agreement(masks, reference[:3]) >= floor
    # The three requests met in the batcher: fewer model calls than images.
    # The one model of ATROUS_MODEL is version 1 of "default" (its series' labels).
    labels = '{model="default",version="1"}'
    assert metric(server.url, "atrous_batch_size_sum" + labels) == 3
    assert metric(server.url, "atrous_batch_size_count" + labels) < 3


def test_serve_with_a_missing_runtime_package_fails_at_start_naming_the_extra(exports):
    code = ("import sys; sys.modules['onnxruntime'] = None; from app.cli.main import main; "
            f"sys.exit(main(['serve', '--model', {str(exports['onnx'])!r}, "
            "'--runtime', 'onnxruntime']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 2, result.stderr
    assert "pip install 'atrous[onnx]'" in result.stderr and "Traceback" not in result.stderr


def test_converting_with_openvino_sends_no_telemetry(exports):
    """OpenVINO's converter reports usage to Google Analytics unless told not to: a fresh
    interpreter loads the SavedModel through OpenVINO (a conversion) and ends with the
    converter's no-op telemetry stub, the real package never imported."""
    script = (
        "import sys\n"
        "from model.inference.runtimes import load_runtime\n"
        f"load_runtime({str(exports['savedmodel'])!r}, 'openvino')\n"
        "from openvino.tools.ovc import telemetry_utils\n"
        "print(telemetry_utils.tm.__name__, sys.modules.get('openvino_telemetry'))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["openvino.tools.ovc.telemetry_stub", "None"], result.stdout


def test_openvino_on_a_share_of_the_cores_does_not_pin_its_threads(exports):
    """Given a thread count (a server worker's share), OpenVINO must not pin: each process
    pins to the first cores of its CPU set, so two workers shared core 0."""
    def pinning(**kwargs: int) -> bool:
        segmenter = load_runtime(exports["openvino"], "openvino", **kwargs)
        return bool(segmenter._request.get_compiled_model().get_property("ENABLE_CPU_PINNING"))

    assert pinning(threads=1) is False
    assert pinning() is True  # OpenVINO's own default where every core is the process's


def test_openvino_compiles_the_probabilities_on_first_use(exports):
    """Only a caller of probabilities pays for their compile (the bulk job and the command
    line never warm up); a server's warm-up compiles them before its first request."""
    from model.inference.preprocessing import letterbox

    cold = load_runtime(exports["openvino"], "openvino")
    warm = load_runtime(exports["openvino"], "openvino", warmup_batch_sizes=[1])
    assert cold.has_probabilities and cold._probabilities is None
    assert warm._probabilities is not None
    canvas, valid = letterbox(IMAGES[0], 129)
    images, sizes = canvas[None], np.array([valid], np.int32)
    np.testing.assert_allclose(cold.probabilities(images, sizes),
                               warm.probabilities(images, sizes), atol=1e-6)
    assert cold._probabilities is not None
