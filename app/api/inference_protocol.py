"""The Open Inference Protocol's (KServe v2 / Triton REST) request and response bodies.

An inference request is JSON, optionally followed by binary tensor data (the *binary
tensor data extension*: ``Inference-Header-Content-Length`` says where the JSON ends, and
each binary input says its ``binary_data_size``).  atrous takes one input, ``image``: a
BYTES tensor of shape [1] holding one encoded image, either binary (a BYTES element is a
4-byte little-endian length and the bytes) or, in plain JSON, a base64 string.  It answers
``mask`` (UINT8 [1, H, W]) and, when asked, ``confidence`` (UINT8 [1, H, W], 255 =
certain), as binary data or JSON lists.  The inference options are request parameters.
"""

import base64
import binascii
import dataclasses
import json
import struct
from typing import Any

import numpy as np

from app.api.errors import AtrousError

HEADER_LENGTH = "Inference-Header-Content-Length"
IMAGE_INPUT = "image"
MASK_OUTPUT = "mask"
CONFIDENCE_OUTPUT = "confidence"
OUTPUTS = (MASK_OUTPUT, CONFIDENCE_OUTPUT)
#: The request parameters that are inference options (as /segment's query).
OPTION_PARAMETERS = ("tiling", "scales", "flip", "classes")


class InferenceRequestError(AtrousError):
    """An inference request the protocol (or atrous's one input) does not allow."""

    status, code, default_message = 400, "invalid_inference_request", "invalid inference request"


@dataclasses.dataclass(frozen=True)
class InferenceRequest:
    """What an inference request asks, parsed."""

    id: str | None
    image: bytes
    options: dict[str, str | bool]  # tiling, scales, flip, classes as given
    outputs: tuple[str, ...]  # of OUTPUTS, in the order asked
    binary: dict[str, bool]  # per output: binary data or a JSON list


def parse_request(body: bytes, header_length: str | None) -> InferenceRequest:
    """The request body (and its ``Inference-Header-Content-Length``), parsed.

    Raises:
        InferenceRequestError: not JSON, no ``image`` BYTES input, bad binary sizes or
            base64, an unknown output or parameter.
    """
    split = _header_length(header_length, len(body))
    try:
        request = json.loads(body[:split])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InferenceRequestError(f"the inference header is not JSON: {e}") from None
    if not isinstance(request, dict):
        raise InferenceRequestError("the inference header must be a JSON object")
    parameters = _object(request.get("parameters", {}), "parameters")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        count = len(inputs) if isinstance(inputs, list) and inputs else "no"
        raise InferenceRequestError(f"{count} inputs: send one BYTES input named 'image'")
    image = None
    offset = split
    for tensor in inputs:
        tensor = _object(tensor, "an input")
        tensor_parameters = _object(tensor.get("parameters", {}), "input parameters")
        size = tensor_parameters.get("binary_data_size")
        data: Any
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(body):
                raise InferenceRequestError(f"input {tensor.get('name')!r}: binary_data_size "
                                            f"{size!r} does not fit the body")
            data, offset = body[offset:offset + size], offset + size
        else:
            data = tensor.get("data")
        if tensor.get("name") != IMAGE_INPUT:
            raise InferenceRequestError(f"unknown input {tensor.get('name')!r}: atrous takes "
                                        f"one BYTES input named {IMAGE_INPUT!r}")
        if tensor.get("datatype") != "BYTES":
            raise InferenceRequestError(f"input {IMAGE_INPUT!r} must be BYTES (an encoded "
                                        f"image), not {tensor.get('datatype')!r}")
        image = _binary_image(data) if size is not None else _json_image(data)
    if image is None or not image:
        raise InferenceRequestError(f"input {IMAGE_INPUT!r} holds no image bytes")
    options: dict[str, str | bool] = {}
    for name in OPTION_PARAMETERS:
        value = parameters.get(name)
        if value is None:
            continue
        if name == "flip":
            if not isinstance(value, bool):
                raise InferenceRequestError("parameter flip must be true or false")
        elif not isinstance(value, str):
            raise InferenceRequestError(f"parameter {name} must be a string")
        options[name] = value
    wanted, binary = _outputs(request.get("outputs"), parameters)
    request_id = request.get("id")
    return InferenceRequest(request_id if isinstance(request_id, str) else None, image,
                            options, wanted, binary)


def encode_response(*, model: str, version: int, request_id: str | None,
                    tensors: dict[str, np.ndarray], binary: dict[str, bool]
                    ) -> tuple[bytes, int | None]:
    """The response body, and the JSON part's length when binary data follows it."""
    outputs, blobs = [], []
    for name, array in tensors.items():
        tensor: dict[str, Any] = {"name": name, "datatype": "UINT8",
                                  "shape": [int(d) for d in array.shape]}
        if binary.get(name):
            blob = np.ascontiguousarray(array, np.uint8).tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = array.reshape(-1).tolist()
        outputs.append(tensor)
    response: dict[str, Any] = {"model_name": model, "model_version": str(version),
                                "outputs": outputs}
    if request_id is not None:
        response["id"] = request_id
    header = json.dumps(response, separators=(",", ":")).encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def _header_length(value: str | None, body_length: int) -> int:
    if value is None:
        return body_length
    if not value.strip().isdigit() or int(value) > body_length:
        raise InferenceRequestError(f"{HEADER_LENGTH} {value!r} does not fit a body of "
                                    f"{body_length} bytes")
    return int(value)


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InferenceRequestError(f"{what} must be a JSON object")
    return value


def _binary_image(data: bytes) -> bytes:
    """The first element of a binary BYTES tensor: a 4-byte little-endian length, bytes."""
    if len(data) < 4:
        raise InferenceRequestError(f"input {IMAGE_INPUT!r}: a BYTES element starts with its "
                                    "4-byte length")
    (length,) = struct.unpack_from("<I", data)
    if 4 + length > len(data):
        raise InferenceRequestError(f"input {IMAGE_INPUT!r}: its element says {length} bytes, "
                                    f"{len(data) - 4} follow")
    if 4 + length != len(data):
        raise InferenceRequestError(f"input {IMAGE_INPUT!r} must hold one image (shape [1])")
    return data[4:4 + length]


def _json_image(data: Any) -> bytes:
    """A JSON BYTES input: one base64 string (perhaps nested in lists)."""
    while isinstance(data, list) and len(data) == 1:
        data = data[0]
    if not isinstance(data, str):
        raise InferenceRequestError(f"input {IMAGE_INPUT!r}: in JSON, give one base64 string "
                                    "(or send it as binary data)")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InferenceRequestError(f"input {IMAGE_INPUT!r} is not valid base64") from None


def _outputs(requested: Any, parameters: dict[str, Any]
             ) -> tuple[tuple[str, ...], dict[str, bool]]:
    default_binary = bool(parameters.get("binary_data_output", False))
    if requested is None:
        return (MASK_OUTPUT,), {MASK_OUTPUT: default_binary}
    if not isinstance(requested, list) or not requested:
        raise InferenceRequestError("outputs must be a non-empty list")
    names, binary = [], {}
    for output in requested:
        output = _object(output, "an output")
        name = output.get("name")
        if name not in OUTPUTS:
            raise InferenceRequestError(f"unknown output {name!r}: {', '.join(OUTPUTS)}")
        output_parameters = _object(output.get("parameters", {}), "output parameters")
        names.append(name)
        binary[name] = bool(output_parameters.get("binary_data", default_binary))
    return tuple(dict.fromkeys(names)), binary
