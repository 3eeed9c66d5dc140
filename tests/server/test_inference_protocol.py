"""The Open Inference Protocol's bodies, parsed and written without a server: what the
Triton client sends (binary and JSON), and each malformed request's message."""

import base64
import json
import struct

import numpy as np
import pytest

from app.api.inference_protocol import InferenceRequestError, encode_response, parse_request


def binary_body(images: list[bytes], **header) -> tuple[bytes, str]:
    blob = b"".join(struct.pack("<I", len(image)) + image for image in images)
    request = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)],
                           "parameters": {"binary_data_size": len(blob)}}], **header}
    text = json.dumps(request).encode()
    return text + blob, str(len(text))


def test_binary_and_base64_json_requests_carry_the_same_image():
    body, length = binary_body([b"PNGDATA"], parameters={"tiling": "on", "flip": True},
                               outputs=[{"name": "confidence"}, {"name": "mask",
                                         "parameters": {"binary_data": True}}], id="r7")
    parsed = parse_request(body, length)
    assert parsed.image == b"PNGDATA" and parsed.id == "r7"
    assert parsed.options == {"tiling": "on", "flip": True}
    assert parsed.outputs == ("confidence", "mask")
    assert parsed.binary == {"confidence": False, "mask": True}
    as_json = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                      "data": [base64.b64encode(b"PNGDATA").decode()]}]})
    parsed = parse_request(as_json.encode(), None)
    assert parsed.image == b"PNGDATA" and parsed.outputs == ("mask",)
    assert parsed.binary == {"mask": False}


@pytest.mark.parametrize("body, length, message", [
    (b"{", None, "not JSON"),
    (b"[]", None, "JSON object"),
    (b'{"inputs": []}', None, "no inputs"),
    (b'{"inputs": [{"name": "image", "datatype": "BYTES", "data": ["eA=="]}, '
     b'{"name": "image", "datatype": "BYTES", "data": ["eQ=="]}]}', None, "2 inputs"),
    (b'{"inputs": [{"name": "pixels", "datatype": "BYTES", "data": ["eA=="]}]}', None,
     "unknown input 'pixels'"),
    (b'{"inputs": [{"name": "image", "datatype": "UINT8", "data": [1]}]}', None, "must be BYTES"),
    (b'{"inputs": [{"name": "image", "datatype": "BYTES", "data": ["%%%"]}]}', None,
     "not valid base64"),
    (b'{"inputs": [{"name": "image", "datatype": "BYTES", "data": ["eA=="]}], '
     b'"outputs": [{"name": "logits"}]}', None, "unknown output 'logits'"),
    (b'{"inputs": [{"name": "image", "datatype": "BYTES", "data": ["eA=="]}], '
     b'"parameters": {"flip": "yes"}}', None, "flip must be true or false"),
    (b'{"inputs": []}', "999", "does not fit"),
])
def test_malformed_requests_say_what_is_wrong(body, length, message):
    with pytest.raises(InferenceRequestError, match=message):
        parse_request(body, length)


def test_a_binary_input_must_hold_exactly_one_image():
    body, length = binary_body([b"one", b"two"])
    with pytest.raises(InferenceRequestError, match="one image"):
        parse_request(body, length)
    body, length = binary_body([b"whole"])
    with pytest.raises(InferenceRequestError, match="does not fit the body"):
        parse_request(body[:-2], length)


def test_responses_put_binary_outputs_after_the_json():
    mask = np.arange(6, dtype=np.uint8).reshape(1, 2, 3)
    body, length = encode_response(model="voc", version=3, request_id="r1",
                                   tensors={"mask": mask, "confidence": mask * 2},
                                   binary={"mask": True})
    assert length is not None
    header = json.loads(body[:length])
    assert header["model_name"] == "voc" and header["model_version"] == "3"
    assert header["outputs"][0] == {"name": "mask", "datatype": "UINT8", "shape": [1, 2, 3],
                                    "parameters": {"binary_data_size": 6}}
    assert header["outputs"][1]["data"] == [0, 2, 4, 6, 8, 10]
    assert body[length:] == mask.tobytes()
    plain, none = encode_response(model="voc", version=3, request_id=None,
                                  tensors={"mask": mask}, binary={})
    assert none is None and json.loads(plain)["outputs"][0]["data"] == list(range(6))
