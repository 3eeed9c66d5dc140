"""Python SDK for atrous, a DeepLab-style semantic segmentation service.

    from atrous_client import AtrousClient

    with AtrousClient("http://127.0.0.1:8000") as client:
        result = client.segment("cat.jpg")
        result.mask            # uint8 [H, W] class ids
        result.classes         # (ClassInfo(id=8, label='cat', pixels=..., ...), ...)
        result.save("cat.png") # palette PNG, VOC colours

        big = client.segment("aerial.tif", tiling="on", format="probabilities",
                             classes=["person"])
        big.probability("person")  # float32 [H, W] in [0, 1]

    client.list_models()       # a server with several models: names, versions, states
    with AtrousClient("http://127.0.0.1:8000", model="voc", version=3) as voc3:
        voc3.segment("cat.jpg").model  # "voc/3"

``AsyncAtrousClient`` has the same methods as coroutines.  Errors are described in
``atrous_client._exceptions``.
"""

from ._base import DEFAULT_BASE_URL, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT
from ._client import AsyncAtrousClient, AtrousClient
from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AtrousError,
    AuthenticationError,
    BadRequestError,
    GatewayTimeoutError,
    InternalServerError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    UnprocessableEntityError,
    UnsupportedMediaTypeError,
)
from ._images import VOC_PALETTE, ImageInput
from ._types import (
    ClassInfo,
    Format,
    ModelClass,
    ModelInfo,
    ModelStatus,
    ModelVersion,
    Segmentation,
    SegmentOptions,
    Tiling,
)
from ._version import __version__

__all__ = [
    "__version__",
    # Clients
    "AtrousClient",
    "AsyncAtrousClient",
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT",
    # Results and inputs
    "Segmentation",
    "ClassInfo",
    "ModelInfo",
    "ModelClass",
    "ModelStatus",
    "ModelVersion",
    "ImageInput",
    "Format",
    "Tiling",
    "SegmentOptions",
    "VOC_PALETTE",
    # Errors
    "AtrousError",
    "APIConnectionError",
    "APITimeoutError",
    "APIStatusError",
    "BadRequestError",
    "AuthenticationError",
    "PayloadTooLargeError",
    "UnsupportedMediaTypeError",
    "UnprocessableEntityError",
    "ServiceUnavailableError",
    "GatewayTimeoutError",
    "InternalServerError",
]

# Public classes report the public module, as httpx does, so reprs and tracebacks say
# `atrous_client.AtrousClient`, not `atrous_client._client.AtrousClient`.
for _obj in list(globals().values()):
    if isinstance(_obj, type) and _obj.__module__.startswith("atrous_client."):
        _obj.__module__ = "atrous_client"
del _obj
