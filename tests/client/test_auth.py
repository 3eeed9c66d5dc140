"""API keys in the SDK (``api_key=`` / ``$ATROUS_API_KEY``, ``AuthenticationError``) and in
``atrous segment --url``, against mock transports and the real keyed server of conftest."""

import asyncio
import io

import atrous_client
import httpx
import numpy as np
import pytest
from atrous_client import AsyncAtrousClient, AtrousClient, AuthenticationError
from PIL import Image

from tests import checkpoint_factory
from tests.conftest import PAINTED_API_KEYS

KEY = "sdk-key-0123456789"
MODEL_JSON = {"backbone": "fake", "output_stride": 16, "input_size": 33, "num_classes": 2,
              "classes": [{"id": 0, "label": "background", "color": [0, 0, 0]},
                          {"id": 1, "label": "aeroplane", "color": [128, 0, 0]}]}


def keyed_transport(seen: list[httpx.Request]) -> httpx.MockTransport:
    """A server with one key, ``KEY``: /v1/model answers it, anything else gets a 401."""
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.headers.get("Authorization") != f"Bearer {KEY}":
            return httpx.Response(401, headers={"X-Request-ID": "rid-401",
                                                "WWW-Authenticate": 'Bearer realm="atrous"'},
                                  json={"error": {"code": "unauthorized",
                                                  "message": "this server needs an API key"},
                                        "request_id": "rid-401"})
        return httpx.Response(200, json=MODEL_JSON)
    return httpx.MockTransport(handler)


@pytest.mark.parametrize(("argument", "environment", "sent"), [
    (KEY, None, KEY),
    (None, KEY, KEY),
    (KEY, "the-environment-loses", KEY),
    (f"  {KEY}\n", None, KEY),
    ("", KEY, None),  # "" sends no key, even with the variable set
    (None, None, None),
])
def test_the_key_comes_from_the_argument_then_the_environment(monkeypatch, argument,
                                                              environment, sent):
    if environment is None:
        monkeypatch.delenv("ATROUS_API_KEY", raising=False)
    else:
        monkeypatch.setenv("ATROUS_API_KEY", environment)
    seen: list[httpx.Request] = []
    with AtrousClient("http://atrous.test", api_key=argument, transport=keyed_transport(seen),
                      max_retries=0) as client:
        if sent == KEY:
            assert client.model_info().backbone == "fake"
        else:
            with pytest.raises(AuthenticationError):
                client.model_info()
        assert KEY not in repr(client)
    expected = None if sent is None else f"Bearer {sent}"
    assert [r.headers.get("Authorization") for r in seen] == [expected]


def test_a_refused_key_is_an_authentication_error_and_never_retried():
    seen: list[httpx.Request] = []
    client = AsyncAtrousClient("http://atrous.test", api_key="wrong", max_retries=3,
                               transport=keyed_transport(seen))

    async def main() -> None:
        async with client:
            await client.segment(np.zeros((4, 4, 3), np.uint8))

    with pytest.raises(AuthenticationError) as error:
        asyncio.run(main())
    assert isinstance(error.value, atrous_client.APIStatusError)
    assert (error.value.status_code, error.value.code, error.value.request_id) == (
        401, "unauthorized", "rid-401")
    assert str(error.value) == "401 unauthorized: this server needs an API key (request id rid-401)"
    assert len(seen) == 1


@pytest.mark.parametrize("bad", ["has space", "tab\tkey", "ключ", "new\nline"])
def test_a_key_that_cannot_be_a_header_fails_before_sending(bad):
    with pytest.raises(ValueError, match="printable ASCII") as error:
        AtrousClient("http://atrous.test", api_key=bad)
    assert bad not in str(error.value)


# ----------------------------------------------------------------- against the real server


def bands_png() -> bytes:
    image, _ = checkpoint_factory.routed_bands(160, 96)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_sdk_with_and_without_the_key(painted_server, monkeypatch):
    monkeypatch.delenv("ATROUS_API_KEY", raising=False)
    with AtrousClient(painted_server.url, max_retries=0) as anonymous:
        assert anonymous.health()  # the probes stay open
        with pytest.raises(AuthenticationError, match="needs an API key"):
            anonymous.segment(bands_png())
    with AtrousClient(painted_server.url, api_key="wrong", max_retries=0) as wrong:
        with pytest.raises(AuthenticationError, match="not valid"):
            wrong.model_info()
    monkeypatch.setenv("ATROUS_API_KEY", PAINTED_API_KEYS[0])
    with AtrousClient(painted_server.url) as client:
        result = client.segment(bands_png(), format="json")
    assert {c.label for c in result.classes} == {"background", "aeroplane", "car", "person"}
    assert set(np.unique(result.mask)) == {0, 1, 7, 15}


def test_atrous_segment_url_with_an_api_key(painted_server, tmp_path, monkeypatch, capsys):
    from app.cli.main import main

    monkeypatch.delenv("ATROUS_API_KEY", raising=False)
    image = tmp_path / "bands.png"
    image.write_bytes(bands_png())
    out = tmp_path / "masks"
    url = painted_server.url

    assert main(["segment", str(image), "--url", url, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "needs an API key" in err and "--api-key or ATROUS_API_KEY" in err
    assert main(["segment", str(image), "--url", url, "--api-key", "wrong", "-o", str(out)]) == 2
    assert "not valid" in capsys.readouterr().err
    assert main(["segment", str(image), "--api-key", "x", "-o", str(out)]) == 2
    assert "--api-key goes with --url" in capsys.readouterr().err
    assert not (out / "bands.png").exists()

    assert main(["segment", str(image), "--url", url, "--api-key", PAINTED_API_KEYS[1],
                 "-o", str(out)]) == 0
    with Image.open(out / "bands.png") as mask:
        assert set(np.unique(np.asarray(mask))) == {0, 1, 7, 15}
    (out / "bands.png").unlink()
    monkeypatch.setenv("ATROUS_API_KEY", PAINTED_API_KEYS[0])
    assert main(["segment", str(image), "--url", url, "-o", str(out)]) == 0
    assert (out / "bands.png").exists()
