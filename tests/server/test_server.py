"""The server as users meet it: a real uvicorn process on loopback serving a real
(tiny) SavedModel.  One test per row of the error table, per output format, per endpoint.
"""

import base64
import io
import json
import os
import struct
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from model.inference.labels import VOC_LABELS, voc_colormap
from model.inference.precision import bf16_units
from tests.server.live import VERSION_LABELS

MAX_UPLOAD = 2_000_000
MAX_PIXELS = 20_000_000


@pytest.fixture(scope="module")
def server(server_factory, tiny_saved_model):
    return server_factory({
        "ATROUS_MODEL": str(tiny_saved_model),
        "ATROUS_MAX_BATCH_SIZE": "4",
        "ATROUS_MAX_BATCH_DELAY_MS": "20",
        "ATROUS_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
        "ATROUS_MAX_IMAGE_PIXELS": str(MAX_PIXELS),
    })


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def runner(tiny_saved_model):
    """The bare model as the server runs it: the same runtime and inference precision (the
    runtimes' parity with TensorFlow is tests/inference's)."""
    from model.inference.runtimes import load_runtime

    return load_runtime(tiny_saved_model)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def photo(width: int = 120, height: int = 80, seed: int = 0) -> Image.Image:
    """Smooth colour blobs: gives a random network something other than one class."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)


def expect_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json", response.text
    body = response.json()
    assert set(body) == {"error", "request_id"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    assert body["request_id"] == response.headers["x-request-id"], body
    return body


def decode_mask(content: bytes) -> Image.Image:
    mask = Image.open(io.BytesIO(content))
    assert mask.format == "PNG" and mask.mode == "P"
    return mask


def huge_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))
    row = b"\x00" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
            + chunk(b"IEND", b""))


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


# --- output formats -------------------------------------------------------------------

def test_png_is_a_palette_mask_of_the_input_size_equal_to_the_bare_model(client, runner):
    from model.inference.imaging import load_image
    from model.inference.pipeline import segment_images

    data = encode(photo(150, 90), "PNG")
    response = client.post("/segment", content=data, headers={"content-type": "image/png"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    mask = decode_mask(response.content)
    assert mask.size == (150, 90)
    palette = np.array(mask.getpalette()[: 3 * 21]).reshape(21, 3)
    assert (palette == voc_colormap(21)).all()
    expected = segment_images(runner, [load_image(data, max_pixels=MAX_PIXELS)])[0]
    agreement = (np.asarray(mask) == expected).mean()
    assert agreement > 0.999, f"server and bare model agree on {agreement:.2%} of pixels"
    assert len(np.unique(expected)) >= 1


def test_big_jpeg_is_decoded_in_full_by_default(client, runner):
    """DeepLab's exact input (and the offline command's mask) unless fast decoding is on."""
    from model.inference.imaging import load_image, load_image_for_model
    from model.inference.pipeline import segment_images

    data = encode(photo(400, 300, seed=5), "JPEG")
    reduced, _ = load_image_for_model(data, max_pixels=MAX_PIXELS, input_size=65)
    assert reduced.size != (400, 300)  # the opt-in fast path would have decoded less
    response = client.post("/segment", content=data, headers={"content-type": "image/jpeg"})
    assert response.status_code == 200, response.text
    mask = np.asarray(decode_mask(response.content))
    expected = segment_images(runner, [load_image(data, max_pixels=MAX_PIXELS)])[0]
    agreement = (mask == expected).mean()
    assert agreement > 0.999, f"server and bare model agree on {agreement:.2%} of pixels"


def test_json_summary_is_complete_and_rle_decodes_with_pycocotools(client):
    from pycocotools import mask as coco

    response = client.post("/segment", params={"format": "json"},
                           files={"image": ("a.jpg", encode(photo(97, 61, seed=3), "JPEG"))})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert (body["width"], body["height"]) == (97, 61)
    assert body["model"] == {"backbone": "cifar_resnet_20", "output_stride": 16,
                             "input_size": 65, "trained": False}
    mask = np.asarray(decode_mask(base64.b64decode(body["mask_png"])))
    assert mask.shape == (61, 97)
    ids = [c["id"] for c in body["classes"]]
    assert ids == sorted(np.unique(mask).tolist())
    for entry in body["classes"]:
        selected = mask == entry["id"]
        assert entry["label"] == VOC_LABELS[entry["id"]]
        assert entry["pixels"] == selected.sum()
        assert entry["fraction"] == pytest.approx(selected.mean(), abs=1e-6)
        ys, xs = np.nonzero(selected)
        assert entry["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                 ys.max() - ys.min() + 1]
        rle = {"size": entry["rle"]["size"], "counts": entry["rle"]["counts"].encode()}
        assert (coco.decode(rle) == selected).all()
        assert coco.encode(np.asfortranarray(selected.astype(np.uint8)))["counts"] == rle[
            "counts"]


def test_overlay_is_a_jpeg_of_the_input_size(client):
    response = client.post("/segment", params={"format": "overlay"},
                           content=encode(photo(64, 48), "PNG"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    overlay = Image.open(io.BytesIO(response.content))
    assert overlay.format == "JPEG" and overlay.size == (64, 48)


def test_headers_request_id_echoed_or_generated_and_server_timing(client):
    data = encode(photo(), "PNG")
    echoed = client.post("/segment", content=data, headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    generated = client.post("/segment", content=data,
                            headers={"X-Request-ID": "bad id\twith spaces"})
    assert generated.headers["x-request-id"] not in ("", "bad id\twith spaces")
    assert len(generated.headers["x-request-id"]) == 32
    stages = dict(part.strip().split(";dur=")
                  for part in echoed.headers["server-timing"].split(","))
    assert list(stages) == ["decode", "queue", "inference", "encode"]
    assert all(float(value) >= 0 for value in stages.values())
    error = client.post("/segment", content=b"", headers={"X-Request-ID": "err-1"})
    assert error.headers["x-request-id"] == "err-1" and error.json()["request_id"] == "err-1"


# --- accepted inputs, converted correctly ---------------------------------------------

def _exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    return encode(photo(40, 20), "JPEG", exif=exif.tobytes())


def _animated_gif() -> bytes:
    buffer = io.BytesIO()
    frames = [photo(30, 20, seed=s).convert("P") for s in range(3)]
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


ACCEPTED = {
    "rgba_png": (lambda: encode(photo().convert("RGBA"), "PNG"), (120, 80)),
    "la_png": (lambda: encode(photo().convert("LA"), "PNG"), (120, 80)),
    "l_png": (lambda: encode(photo().convert("L"), "PNG"), (120, 80)),
    "1bit_png": (lambda: encode(photo().convert("1"), "PNG"), (120, 80)),
    "p_png": (lambda: encode(photo().convert("P"), "PNG"), (120, 80)),
    "cmyk_jpeg": (lambda: encode(photo().convert("CMYK"), "JPEG"), (120, 80)),
    "16bit_png": (lambda: encode(Image.fromarray(
        np.asarray(photo().convert("L"), np.uint16) * 257), "PNG"), (120, 80)),
    "exif_rotated_jpeg": (_exif_rotated_jpeg, (20, 40)),
    "animated_gif": (_animated_gif, (30, 20)),
    "webp": (lambda: encode(photo(), "WEBP"), (120, 80)),
    "bmp": (lambda: encode(photo(), "BMP"), (120, 80)),
    "tiff": (lambda: encode(photo(), "TIFF"), (120, 80)),
    "1x1": (lambda: encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), (1, 1)),
    "1x10000": (lambda: encode(Image.new("RGB", (1, 10_000), (9, 9, 9)), "PNG"), (1, 10_000)),
    "10000x1": (lambda: encode(Image.new("RGB", (10_000, 1), (9, 9, 9)), "PNG"), (10_000, 1)),
}


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_accepted_inputs_give_a_mask_of_the_displayed_size(client, name):
    make, size = ACCEPTED[name]
    response = client.post("/segment", content=make(),
                           headers={"content-type": "application/octet-stream"})
    assert response.status_code == 200, response.text
    assert decode_mask(response.content).size == size


def test_sixteen_bit_png_is_segmented_like_its_eight_bit_twin(client):
    grey = np.asarray(photo().convert("L"))
    eight = client.post("/segment", content=encode(Image.fromarray(grey), "PNG"))
    sixteen = client.post("/segment",
                          content=encode(Image.fromarray(grey.astype(np.uint16) * 257), "PNG"))
    assert eight.status_code == sixteen.status_code == 200
    assert (np.asarray(decode_mask(eight.content))
            == np.asarray(decode_mask(sixteen.content))).all()


# --- bad input: one test per row of the table -----------------------------------------

def test_empty_body_is_400(client):
    expect_error(client.post("/segment", content=b""), 400, "empty_body")


def test_empty_multipart_image_is_400(client):
    response = client.post("/segment", files={"image": ("a.png", b"")})
    expect_error(response, 400, "empty_body")


def test_multipart_without_image_field_is_422(client):
    response = client.post("/segment", files={"picture": ("a.png", encode(photo(), "PNG"))})
    expect_error(response, 422, "missing_image")


def test_multipart_with_image_as_a_text_field_is_422(client):
    response = client.post("/segment", data={"image": "not a file"},
                           files={"other": ("x", b"x")})
    expect_error(response, 422, "missing_image")


def test_malformed_multipart_is_422(client):
    response = client.post("/segment", content=b"--nope\r\ngarbage",
                           headers={"content-type": "multipart/form-data; boundary=zzz"})
    expect_error(response, 422, "missing_image")


@pytest.mark.parametrize("name,data", [
    ("text", b"hello, this is not an image"),
    ("svg", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" '
            b'height="10"><rect width="10" height="10"/></svg>'),
    ("pdf", b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF"),
    ("psd", b"8BPS\x00\x01" + b"\x00" * 40),
])
def test_not_an_image_is_415(client, name, data):
    expect_error(client.post("/segment", content=data), 415, "unsupported_media_type")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF", "GIF"])
def test_truncated_image_is_400(client, fmt):
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))
    data = encode(noisy, fmt)
    expect_error(client.post("/segment", content=data[: len(data) // 2]), 400, "corrupt_image")


def test_fuzzed_tiff_is_400_not_500(client):
    data = bytearray(encode(photo(16, 16), "TIFF"))
    rng = np.random.default_rng(7)
    statuses = set()
    for _ in range(25):
        mutated = bytearray(data)
        for index in rng.integers(8, len(mutated), 4):
            mutated[index] = int(rng.integers(0, 256))
        response = client.post("/segment", content=bytes(mutated))
        statuses.add(response.status_code)
        assert response.status_code in (200, 400, 413, 415), response.text
    assert 500 not in statuses


def test_body_over_the_limit_with_content_length_is_413(client):
    response = client.post("/segment", content=b"\x89PNG\r\n\x1a\n" + b"\x00" * MAX_UPLOAD)
    expect_error(response, 413, "payload_too_large")


def test_body_over_the_limit_chunked_is_413(client):
    def chunks():
        yield b"\x89PNG\r\n\x1a\n"
        for _ in range(MAX_UPLOAD // 65536 + 2):
            yield b"\x00" * 65536

    response = client.post("/segment", content=chunks())
    assert "content-length" not in response.request.headers
    expect_error(response, 413, "payload_too_large")


def test_multipart_over_the_limit_is_413(client):
    response = client.post("/segment", files={"image": ("a.png", b"\x00" * (MAX_UPLOAD + 10))})
    expect_error(response, 413, "payload_too_large")


def test_image_over_the_pixel_limit_is_413_fast_without_a_memory_spike(client, server):
    data = huge_png(20_000, 20_000)
    assert len(data) < 100_000
    before = peak_rss_kib(server.process.pid)
    start = time.monotonic()
    response = client.post("/segment", content=data)
    elapsed = time.monotonic() - start
    expect_error(response, 413, "image_too_large")
    assert elapsed < 1.0
    grown_mib = (peak_rss_kib(server.process.pid) - before) / 1024
    assert grown_mib < 50, f"peak RSS grew by {grown_mib:.0f} MiB"


@pytest.mark.parametrize("query", ["format=gif", "format=", "format=PNG"])
def test_bad_query_values_are_422(client, query):
    response = client.post(f"/segment?{query}", content=encode(photo(), "PNG"))
    expect_error(response, 422, "validation_error")


def test_unknown_path_is_404_in_the_envelope(client):
    expect_error(client.get("/nope"), 404, "not_found")


def test_wrong_method_is_405_in_the_envelope(client):
    expect_error(client.get("/segment"), 405, "method_not_allowed")
    expect_error(client.delete("/healthz"), 405, "method_not_allowed")


# --- endpoints ------------------------------------------------------------------------

def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_once_warmed(client):
    response = client.get("/readyz")
    assert response.status_code == 200 and response.json() == {"status": "ready"}


def test_model_info(client):
    response = client.get("/v1/model")
    assert response.status_code == 200, response.text
    info = response.json()
    assert {k: info[k] for k in ("backbone", "output_stride", "input_size", "num_classes",
                                 "head", "trained", "weights", "precision")} == {
        "backbone": "cifar_resnet_20", "output_stride": 16, "input_size": 65,
        "num_classes": 21, "head": "logits", "trained": False, "weights": "random",
        "precision": "fp32"}
    assert info["classes"][15] == {"id": 15, "label": "person", "color": [192, 128, 128]}
    assert len(info["classes"]) == 21
    assert info["device"].startswith("CPU")  # OpenVINO names the CPU model: "CPU (AMD EPYC)"
    # The default runtime on a CPU: OpenVINO serves the SavedModel (runtimes.CPU_PREFERENCE).
    assert info["runtime"] == "openvino" and info["runtime_version"].startswith("20")
    # It computes in bf16 where the CPU has bf16 units, fp32 elsewhere, and says why.
    want = "bf16" if bf16_units() else "fp32"
    assert info["inference_precision"] == want, info
    assert info["inference_precision_reason"].startswith(f"auto: {want}, as the CPU has")
    assert info["batching"] == {"max_batch_size": 4, "max_batch_delay_ms": 20.0,
                                "max_queue": 64, "request_timeout_s": 30.0}


def test_metrics_count_requests_stages_batches_and_rejections(client):
    client.post("/segment", content=b"not an image")
    client.post("/segment", content=encode(photo(), "PNG"))
    text = client.get("/metrics").text
    assert 'atrous_requests_total{method="POST",route="/segment",status="200"}' in text
    assert 'atrous_requests_total{method="POST",route="/segment",status="415"}' in text
    assert 'atrous_rejections_total{reason="unsupported_media_type"}' in text
    for stage in ("decode", "queue", "inference", "encode"):
        assert (f'atrous_stage_duration_seconds_count{{model="default",stage="{stage}",'
                f'version="1"}}') in text
    assert "atrous_batch_size_bucket" in text
    assert f"atrous_queue_depth{{{VERSION_LABELS}}} 0.0" in text
    assert "atrous_ready 1.0" in text


def test_docs_and_openapi(client):
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "/segment" in schema["paths"]


def test_openapi_matches_the_snapshot(client):
    """The public HTTP surface is the committed snapshot.  ``ATROUS_UPDATE_SNAPSHOTS=1``
    rewrites it (review the diff, commit it); a missing one fails rather than being written,
    so that CI cannot pass by making its own."""
    snapshot = Path(__file__).parent / "snapshots" / "openapi.json"
    current = client.get("/openapi.json").json()
    regenerate = ("ATROUS_UPDATE_SNAPSHOTS=1 python -m pytest -n 0 tests/server/test_server.py "
                  "-k openapi")
    if os.environ.get("ATROUS_UPDATE_SNAPSHOTS") == "1":
        snapshot.parent.mkdir(exist_ok=True)
        snapshot.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert snapshot.exists(), f"{snapshot} is missing: write it with `{regenerate}`, commit it"
    assert current == json.loads(snapshot.read_text()), (
        "the public HTTP surface changed: update docs/http-api.md, tell the SDK, then "
        f"regenerate the snapshot with `{regenerate}`")


# --- batching through the server ------------------------------------------------------

def test_concurrent_requests_are_batched_and_each_gets_its_own_mask(server):
    import asyncio

    sizes = [(40 + 7 * i, 30 + 5 * i) for i in range(8)]

    async def main():
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            before = client.get("/metrics")
            return await before, await asyncio.gather(*(
                client.post("/segment", content=encode(photo(w, h, seed=i), "PNG"))
                for i, (w, h) in enumerate(sizes)))

    before, responses = asyncio.run(main())
    assert all(r.status_code == 200 for r in responses)
    assert [decode_mask(r.content).size for r in responses] == sizes
    after = httpx.get(server.url + "/metrics").text

    def samples(text, name):
        return float(next(line.split()[-1] for line in text.splitlines()
                          if line.startswith(name + " ")))
    count, total = (f"atrous_batch_size_{part}{{{VERSION_LABELS}}}" for part in ("count", "sum"))
    calls = samples(after, count) - samples(before.text, count)
    images = samples(after, total) - samples(before.text, total)
    assert images == 8 and calls < 8, f"{images} images in {calls} model calls"


# --- the OpenAPI schema, fuzzed -------------------------------------------------------

schemathesis = pytest.importorskip("schemathesis")


@pytest.fixture(scope="module")
def api_schema(server):
    return schemathesis.openapi.from_url(server.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
def test_schemathesis_no_500_and_responses_match_the_schema(case):
    """Generated requests (query values, multipart and raw bodies) get documented
    statuses, content types and bodies, and never a 500.

    "Schema-valid data is accepted" is the one check left out: the schema says "binary",
    it cannot say "a decodable image", so random bytes are rightly refused with 415/400.
    """
    from schemathesis import checks

    response = case.call_and_validate(excluded_checks=[checks.positive_data_acceptance])
    assert response.status_code != 500, response.text
