"""The Open Inference Protocol with the unmodified Triton HTTP client, against a real
server (the painted model, with API keys): live, ready, metadata, infer in binary and in
JSON, the mask equal to /segment's, the protocol's errors, 401 without a key."""

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import PAINTED_API_KEYS

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402


def key() -> dict[str, str]:
    """A fresh header dict per call: the Triton client adds its own headers to the dict."""
    return {"Authorization": f"Bearer {PAINTED_API_KEYS[0]}"}


@pytest.fixture(scope="module")
def triton(painted_server):
    client = httpclient.InferenceServerClient(painted_server.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def image_png() -> bytes:
    """Red, green and blue blocks on black: the painted model's person, aeroplane, car."""
    pixels = np.zeros((60, 90, 3), np.uint8)
    pixels[:, :30, 0] = 255
    pixels[:, 30:60, 1] = 255
    pixels[20:40, 60:, 2] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def segment_mask(painted_server, image_png) -> np.ndarray:
    response = httpx.post(painted_server.url + "/segment", content=image_png, headers=key(),
                          timeout=30)
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)))


def image_input(data: bytes, *, binary: bool):
    tensor = httpclient.InferInput("image", [1], "BYTES")
    if binary:
        tensor.set_data_from_numpy(np.array([data], dtype=np.object_), binary_data=True)
    else:  # JSON: the image as one base64 string
        tensor.set_data_from_numpy(np.array([base64.b64encode(data)], dtype=np.object_),
                                   binary_data=False)
    return tensor


def test_health_and_metadata(triton, painted_server):
    assert triton.is_server_live() and triton.is_server_ready()
    server = triton.get_server_metadata(headers=key())
    assert server["name"] == "atrous" and "binary_tensor_data" in server["extensions"]
    assert triton.is_model_ready("default", headers=key())
    assert triton.is_model_ready("default", "1", headers=key())
    assert not triton.is_model_ready("default", "2", headers=key())
    assert not triton.is_model_ready("nope", headers=key())
    meta = triton.get_model_metadata("default", headers=key())
    assert meta["name"] == "default" and meta["versions"] == ["1"]
    assert meta["platform"] == "atrous_savedmodel"
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [1]}]
    assert [o["name"] for o in meta["outputs"]] == ["mask", "confidence"]
    assert "/" not in str(meta)  # no server path in public metadata
    info = httpx.get(painted_server.url + "/v1/model", headers=key(), timeout=10).json()
    assert info["weights"] == "painted.ckpt"  # the checkpoint's name, not where it lives


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_gives_segments_mask(triton, image_png, segment_mask, binary):
    outputs = [httpclient.InferRequestedOutput("mask", binary_data=binary),
               httpclient.InferRequestedOutput("confidence", binary_data=binary)]
    result = triton.infer("default", [image_input(image_png, binary=binary)], model_version="1",
                          outputs=outputs, headers=key(), request_id="r-1")
    mask = result.as_numpy("mask")
    assert mask.dtype == np.uint8 and mask.shape == (1, *segment_mask.shape)
    np.testing.assert_array_equal(mask[0], segment_mask)
    assert set(np.unique(mask)) == {0, 1, 7, 15}  # the four painted classes are all there
    confidence = result.as_numpy("confidence")
    assert confidence.shape == mask.shape and confidence.dtype == np.uint8
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == (
        "default", "1", "r-1")


@pytest.mark.parametrize("options", [{"classes": "person"}, {"tiling": "on", "flip": True}])
def test_infer_takes_the_options_as_parameters(triton, image_png, painted_server, options):
    expected = httpx.post(painted_server.url + "/segment", content=image_png, headers=key(),
                          params={k: str(v).lower() for k, v in options.items()}, timeout=30)
    assert expected.status_code == 200, expected.text
    result = triton.infer("default", [image_input(image_png, binary=True)], headers=key(),
                          parameters=options)
    np.testing.assert_array_equal(result.as_numpy("mask")[0],
                                  np.asarray(Image.open(io.BytesIO(expected.content))))
    if "classes" in options:
        assert set(np.unique(result.as_numpy("mask"))) == {0, 15}


def test_errors_are_the_protocols_and_keys_apply(triton, image_png, painted_server):
    with pytest.raises(InferenceServerException) as missing:
        triton.infer("default", [image_input(image_png, binary=True)])
    assert missing.value.status() == "401"
    with pytest.raises(InferenceServerException) as unknown:
        triton.infer("coco", [image_input(image_png, binary=True)], headers=key())
    assert unknown.value.status() == "404" and "coco" in unknown.value.message()
    with pytest.raises(InferenceServerException) as corrupt:
        triton.infer("default", [image_input(b"not an image", binary=True)], headers=key())
    assert corrupt.value.status() == "415"
    wrong = httpclient.InferInput("pixels", [1], "BYTES")
    wrong.set_data_from_numpy(np.array([image_png], dtype=np.object_))
    with pytest.raises(InferenceServerException) as bad:
        triton.infer("default", [wrong], headers=key())
    assert bad.value.status() == "400" and "image" in bad.value.message()
    raw = httpx.post(painted_server.url + "/v2/models/default/infer", content=b"{",
                     headers=key(), timeout=10)
    assert raw.status_code == 400 and set(raw.json()) == {"error"}
    # The repository API is off without ATROUS_ADMIN_KEYS: the route does not exist.
    load = httpx.post(painted_server.url + "/v2/repository/models/default/load", headers=key())
    assert load.status_code == 404
