"""API keys (ATROUS_API_KEYS / ATROUS_API_KEYS_FILE): settings, the one dependency, and
every route with no key, a wrong key and the right key.

In-process (a constant fake model behind the real app), so that each configuration costs
milliseconds; the real server process with keys is exercised by tests/web and the SDK tests.
"""

import asyncio
import hmac
import io
import logging
from pathlib import Path
from unittest import mock

import httpx
import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from app.api import auth
from app.loader import LoadedModel
from app.main import create_app
from app.settings import Settings
from model.inference.contract import ModelMetadata
from model.inference.labels import class_labels, voc_colormap
from model.inference.precision import InferencePrecision

KEYS = ("first-key-0123456789", "second-key-abcdef")
SIZE = 33
PROTECTED = [("POST", "/segment"), ("GET", "/v1/model")]
OPEN = ["/healthz", "/readyz", "/", "/static/app.js", "/static/style.css", "/openapi.json",
        "/docs"]


class ConstantSegmenter:
    metadata = ModelMetadata(
        backbone="fake", output_stride=16, num_classes=21, head="logits", input_size=SIZE,
        precision="fp32", trained=False, weights="random", labels=tuple(class_labels(21)),
        colors=tuple(tuple(int(c) for c in rgb) for rgb in voc_colormap(21)),
        tensorflow_version="none")
    runtime, runtime_version, device = "fake", "0", "CPU"
    inference_precision = InferencePrecision("fp32", "fp32: a fake that computes nothing")
    oom_errors: tuple[type[BaseException], ...] = (MemoryError,)

    def __call__(self, images: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        return np.full(images.shape[:3], 15, np.uint8)


def loader(_: Settings) -> LoadedModel:
    return LoadedModel(ConstantSegmenter(), Path("/fake"))


def settings(**overrides) -> Settings:
    return Settings(backbone="cifar_resnet_20", input_size=65, max_batch_delay_ms=1,
                    **overrides)


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 10), (255, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def call_all(app_settings: Settings, requests: list[tuple[str, str, dict[str, str]]]
             ) -> list[httpx.Response]:
    """Sends ``(method, path, headers)`` requests to a ready in-process app, in order."""
    app = create_app(app_settings, loader=loader, handle_signals=False)

    async def main() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                for _ in range(500):
                    if (await client.get("/readyz")).status_code == 200:
                        break
                    await asyncio.sleep(0.01)
                return [await client.request(method, path, headers=headers,
                                              content=png() if method == "POST" else None)
                        for method, path, headers in requests]

    return asyncio.run(main())


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_unauthorized(response: httpx.Response, invalid_token: bool) -> None:
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["error"]["code"] == "unauthorized" and body["request_id"], body
    assert body["request_id"] == response.headers["x-request-id"]
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="atrous"'), challenge
    assert ('error="invalid_token"' in challenge) is invalid_token, challenge
    for key in KEYS:
        assert key not in response.text


# --------------------------------------------------------------------------------- routes


def test_protected_routes_need_one_of_the_keys():
    headers = [({}, "missing"), (bearer("wrong-key"), "wrong"), (bearer(KEYS[0] + "x"), "wrong"),
               ({"Authorization": f"Basic {KEYS[0]}"}, "missing"),
               ({"Authorization": KEYS[0]}, "missing"), (bearer(KEYS[0]), "ok"),
               (bearer(KEYS[1]), "ok"), ({"Authorization": f"bearer {KEYS[1]}"}, "ok")]
    requests = [(method, path, header) for method, path in PROTECTED for header, _ in headers]
    responses = call_all(settings(api_keys=",".join(KEYS)), requests)
    for (method, path, header), response, (_, expected) in zip(
            requests, responses, headers * len(PROTECTED), strict=True):
        if expected == "ok":
            assert response.status_code == 200, (method, path, header, response.text)
        else:
            assert_unauthorized(response, invalid_token=expected == "wrong")
    assert responses[0].json()["error"]["message"].startswith("this server needs an API key")


def test_health_probes_the_page_and_the_schema_stay_open():
    responses = call_all(settings(api_keys=KEYS[0], metrics_public=False),
                         [("GET", path, {}) for path in OPEN])
    for path, response in zip(OPEN, responses, strict=True):
        assert response.status_code == 200, (path, response.text)


@pytest.mark.parametrize("public", [True, False])
def test_metrics_are_keyed_only_when_not_public(public):
    requests = [("GET", "/metrics", {}), ("GET", "/metrics", bearer("nope")),
                ("GET", "/metrics", bearer(KEYS[1]))]
    no_key, wrong, right = call_all(settings(api_keys=",".join(KEYS), metrics_public=public),
                                    requests)
    assert right.status_code == 200 and "atrous_requests_total" in right.text
    if public:
        assert no_key.status_code == wrong.status_code == 200
    else:
        assert_unauthorized(no_key, invalid_token=False)
        assert_unauthorized(wrong, invalid_token=True)
        # Refusals are counted, so that a stream of bad keys shows on a dashboard.
        assert 'atrous_rejections_total{reason="unauthorized"} 2.0' in right.text


def test_without_keys_everything_is_open_as_before():
    requests = [(method, path, header) for method, path in [*PROTECTED, ("GET", "/metrics")]
                for header in ({}, bearer("anything"))]
    for response in call_all(settings(), requests):
        assert response.status_code == 200, response.text


def test_the_schema_declares_bearer_auth_only_when_keys_are_set():
    keyed, = call_all(settings(api_keys=KEYS[0]), [("GET", "/openapi.json", {})])
    open_, = call_all(settings(), [("GET", "/openapi.json", {})])
    schema = keyed.json()
    assert schema["components"]["securitySchemes"]["apiKey"] == {
        "type": "http", "scheme": "bearer", "description": auth.bearer.model.description}
    for method, path in PROTECTED:
        operation = schema["paths"][path][method.lower()]
        assert operation["security"] == [{"apiKey": []}] and "401" in operation["responses"]
    assert "security" not in schema["paths"]["/healthz"]["get"]
    assert "security" not in schema["paths"]["/metrics"]["get"]  # public by default
    assert "securitySchemes" not in open_.json().get("components", {})
    assert "401" not in open_.json()["paths"]["/segment"]["post"]["responses"]


def test_the_policy_is_logged_once_at_start(caplog):
    with caplog.at_level(logging.INFO, logger="app.api.auth"):
        create_app(settings(), loader=loader, handle_signals=False)
        create_app(settings(api_keys=",".join(KEYS), metrics_public=False), loader=loader,
                   handle_signals=False)
    messages = [r.getMessage() for r in caplog.records if r.name == "app.api.auth"]
    assert messages == [
        "no API keys set (ATROUS_API_KEYS, ATROUS_API_KEYS_FILE): every route is open",
        "2 API keys set: /segment, /v1/model, /metrics need Authorization: Bearer <key>"]
    assert not any(key in caplog.text for key in KEYS)


def test_every_key_is_compared_in_constant_time():
    keys = tuple(k.encode() for k in KEYS)
    with mock.patch.object(auth.hmac, "compare_digest", wraps=hmac.compare_digest) as compare:
        assert auth.key_matches(KEYS[0], keys)
        assert compare.call_count == len(keys)  # no early exit on the first match
        assert not auth.key_matches("other", keys)
        assert not auth.key_matches("", keys)
        assert not auth.key_matches("ключ", keys)  # non-ASCII: refused, not an error
    # The digests compared have one length whatever the key's, so timing cannot leak it.
    assert {len(call.args[0]) for call in compare.call_args_list} == {32}


# ------------------------------------------------------------------------------- settings


def test_keys_from_the_variable_and_the_file_are_merged(tmp_path, monkeypatch):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# rotated 2026-11\n\n  from-file-1  \nfrom-file-2\n" + KEYS[0] + "\n")
    monkeypatch.setenv("ATROUS_API_KEYS", f" {KEYS[0]} , ,{KEYS[1]},")
    monkeypatch.setenv("ATROUS_API_KEYS_FILE", str(keys_file))
    loaded = Settings()
    assert loaded.accepted_api_keys == (KEYS[0].encode(), KEYS[1].encode(), b"from-file-1",
                                        b"from-file-2")
    assert KEYS[0] not in repr(loaded) and KEYS[0] not in str(loaded.model_dump())


def test_blank_keys_mean_no_access_control(monkeypatch):
    monkeypatch.setenv("ATROUS_API_KEYS", "")  # as an empty Secret or .env line gives
    assert Settings().accepted_api_keys == ()
    assert settings().accepted_api_keys == ()


@pytest.mark.parametrize(("overrides", "message"), [
    ({"api_keys": " , ,"}, "ATROUS_API_KEYS holds no key"),
    ({"api_keys": "s3cr3t-good,s3cr3t has-space"}, "key 2 has a space"),
    ({"api_keys": "s3cr3t\tin-it"}, "key 1 has a space"),
    ({"api_keys": "s3cr3t-naïve"}, "non-ASCII"),
    ({"api_keys_file": "missing"}, "cannot read"),
    ({"api_keys_file": "empty"}, "holds no key"),
    ({"metrics_public": False}, "ATROUS_METRICS_PUBLIC=false needs API keys"),
])
def test_bad_key_settings_fail_at_start(tmp_path, overrides, message):
    (tmp_path / "empty").write_text("# nothing yet\n\n")
    for name in ("api_keys_file",):
        if name in overrides:
            overrides[name] = tmp_path / overrides[name]
    with pytest.raises(ValidationError, match=message) as error:
        settings(**overrides)
    assert "s3cr3t" not in str(error.value)  # keys are never echoed (logs keep errors)


def test_serve_has_one_option_per_key_setting():
    from app.cli.main import build_parser

    args = build_parser().parse_args(["serve", "--api-keys", ",".join(KEYS),
                                      "--no-metrics-public"])
    overrides = {k: v for k, v in vars(args).items() if k in Settings.model_fields
                 and v is not None}
    loaded = settings(**overrides)
    assert loaded.accepted_api_keys == tuple(k.encode() for k in KEYS)
    assert loaded.metrics_public is False


def test_the_key_is_checked_before_the_body_is_read():
    too_big = settings(api_keys=KEYS[0], max_upload_bytes=1024)
    app = create_app(too_big, loader=loader, handle_signals=False)

    async def main() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                while (await client.get("/readyz")).status_code != 200:
                    await asyncio.sleep(0.01)
                body = b"\0" * 4096
                return [await client.post("/segment", content=body),
                        await client.post("/segment", content=body, headers=bearer(KEYS[0]))]

    anonymous, keyed = asyncio.run(main())
    assert_unauthorized(anonymous, invalid_token=False)  # not 413: nothing was read
    assert keyed.status_code == 413, keyed.text
