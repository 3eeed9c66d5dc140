"""The model repository in-process, with fake models whose masks say which version ran:
the layout, the version policy, swaps that keep serving, failed and half-written versions,
leases, per-model URLs and per-version metrics.  (A real uvicorn process swapping real
models under load: test_hot_swap.py.)"""

import asyncio
import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from app.loader import LoadedModel
from app.main import create_app
from app.repository.layout import VersionPolicy, parse_version_policy, scan
from app.repository.manager import VersionState
from app.service import Phase
from app.settings import Settings
from model.inference.contract import METADATA_PATH
from tests.server.test_app import METADATA, ConstantSegmenter, png_bytes, wait_for


def publish(root: Path, model: str, version: int, label: int, *, corrupt: bool = False,
            name: str | None = None) -> Path:
    """Writes a fake version (its mask is all ``label``) under a temporary name, then
    renames it into place, as a publisher should; ``name`` leaves it under that name."""
    staging = root / model / f".tmp-{version}"
    (staging / METADATA_PATH).parent.mkdir(parents=True)
    (staging / METADATA_PATH).write_text(METADATA.to_json())
    (staging / "label.json").write_text("{garbage" if corrupt else json.dumps(label))
    target = root / model / (name or str(version))
    if name != staging.name:
        staging.rename(target)
    return target


def fake_loader(settings: Settings) -> LoadedModel:
    """A version directory -> a segmenter painting its label (a corrupt one raises)."""
    assert settings.model is not None
    label = json.loads((settings.model / "label.json").read_text())
    return LoadedModel(ConstantSegmenter(label=label), settings.model)


def mask_value(response: httpx.Response) -> int:
    assert response.status_code == 200, response.text
    values = np.unique(np.asarray(Image.open(io.BytesIO(response.content))))
    assert len(values) == 1, values
    return int(values[0])


def repository_settings(root: Path, **overrides) -> Settings:
    return Settings(model_repository=root, max_batch_delay_ms=1, retry_after_s=2,
                    shutdown_grace_s=5, **overrides)


async def with_app(app, body):
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            await wait_for(lambda: app.state.models.phase is Phase.READY)
            return await body(client, app.state.models)


def test_only_integer_directories_are_versions_and_the_policy_picks(tmp_path):
    publish(tmp_path, "voc", 1, 1)
    publish(tmp_path, "voc", 3, 3)
    publish(tmp_path, "voc", 12, 12)
    publish(tmp_path, "voc", 4, 4, name=".tmp-4")  # being written: not a version yet
    (tmp_path / "voc" / "007").mkdir()  # leading zeros: ambiguous, skipped
    (tmp_path / "voc" / "README").write_text("not a version")
    (tmp_path / ".hidden").mkdir()
    found = scan(tmp_path)
    assert list(found) == ["voc"] and sorted(found["voc"]) == [1, 3, 12]
    assert parse_version_policy("latest:1").select([1, 3, 12]) == [12]
    assert parse_version_policy("latest:2").select([1, 3, 12]) == [12, 3]
    assert parse_version_policy("specific:3,1").select([1, 3, 12]) == [3, 1]
    assert VersionPolicy(latest=None, specific=(5,)).select([1, 3]) == []
    for bad in ("latest:0", "newest:2", "specific:", "specific:a"):
        with pytest.raises(ValueError, match="version policy"):
            parse_version_policy(bad)


def test_settings_refuse_a_repository_beside_a_model_and_a_bad_policy(tmp_path):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="not a directory"):
        Settings(model_repository=tmp_path / "missing")
    with pytest.raises(ValidationError, match="ATROUS_VERSION_POLICY"):
        Settings(model_repository=tmp_path, version_policy="latest:-1")
    with pytest.raises(ValidationError, match="ATROUS_DEFAULT_MODEL"):
        Settings(default_model="../etc")
    publish(tmp_path, "a", 1, 1)
    publish(tmp_path, "b", 1, 2)
    with pytest.raises(ValueError, match="holds 2 models"):
        create_app(repository_settings(tmp_path), loader=fake_loader, handle_signals=False)


def test_a_new_version_takes_new_requests_while_the_old_one_finishes_its_own(tmp_path):
    publish(tmp_path, "voc", 1, 1)
    publish(tmp_path, "person", 1, 15)

    async def body(client, manager):
        first = await client.post("/segment", content=png_bytes())
        with manager.lease() as held:  # a request still running on version 1
            publish(tmp_path, "voc", 2, 2)
            await manager.sync()
            during = await client.post("/segment", content=png_bytes())
            pinned_old = await client.post("/v1/models/voc/versions/1/segment",
                                           content=png_bytes())
            ready = await client.get("/readyz")
            listing = (await client.get("/v1/models")).json()
            held_state = held.state
        await wait_for(lambda: 1 not in manager.models["voc"])
        metrics = (await client.get("/metrics")).text
        other = await client.post("/v1/models/person/segment", content=png_bytes())
        pinned = await client.post("/v1/models/voc/versions/2/segment", content=png_bytes())
        info = (await client.get("/v1/models/voc")).json()
        return first, during, pinned_old, ready, listing, held_state, metrics, other, pinned, info

    app = create_app(repository_settings(tmp_path, default_model="voc"), loader=fake_loader,
                     handle_signals=False)
    (first, during, pinned_old, ready, listing, held_state, metrics, other, pinned,
     info) = asyncio.run(with_app(app, body))
    assert mask_value(first) == 1 and first.headers["x-atrous-model"] == "voc/1"
    assert mask_value(during) == 2 and during.headers["x-atrous-model"] == "voc/2"
    # Unloading: version 1 finishes what it holds but takes nothing new.
    assert held_state is VersionState.UNLOADING
    assert pinned_old.status_code == 404, pinned_old.text
    assert pinned_old.json()["error"]["code"] == "model_not_found"
    assert ready.status_code == 200
    voc = next(m for m in listing["models"] if m["name"] == "voc")
    assert voc["default"] is True
    assert [(v["version"], v["state"]) for v in voc["versions"]] == [(2, "available"),
                                                                    (1, "unloading")]
    assert 'atrous_ready{model="voc",version="2"} 1.0' in metrics
    assert 'model="voc",version="1"' not in metrics  # the unloaded version's series: gone
    assert mask_value(other) == 15 and other.headers["x-atrous-model"] == "person/1"
    assert mask_value(pinned) == 2 and pinned.headers["x-atrous-model"] == "voc/2"
    assert (info["name"], info["version"]) == ("voc", 2) and len(info["fingerprint"]) == 16
    assert str(tmp_path) not in json.dumps(listing) + json.dumps(info)


def test_a_version_that_is_not_a_number_is_a_bad_request_and_a_missing_one_is_not_found(
        tmp_path):
    publish(tmp_path, "voc", 1, 1)

    async def body(client, manager):
        paths = {bad: f"/v1/models/voc/versions/{bad}" for bad in ("abc", "0", "-1", "1.5", "٣")}
        answers = {bad: await client.get(path) for bad, path in paths.items()}
        answers["segment"] = await client.post("/v1/models/voc/versions/abc/segment",
                                               content=png_bytes())
        answers["v2"] = await client.get("/v2/models/voc/versions/abc")
        answers["missing"] = await client.get("/v1/models/voc/versions/7")
        answers["known"] = await client.get("/v1/models/voc/versions/1")
        return answers

    app = create_app(repository_settings(tmp_path), loader=fake_loader, handle_signals=False)
    answers = asyncio.run(with_app(app, body))
    for bad in ("abc", "0", "-1", "1.5", "٣", "segment"):
        assert answers[bad].status_code == 422, (bad, answers[bad].text)
        assert answers[bad].json()["error"]["code"] == "validation_error"
    assert "model_version" in answers["abc"].json()["error"]["message"]
    assert answers["v2"].status_code == 422 and "error" in answers["v2"].json()
    assert answers["missing"].status_code == 404
    assert answers["missing"].json()["error"]["code"] == "model_not_found"
    assert answers["known"].status_code == 200


def test_a_corrupt_or_half_written_version_leaves_the_old_one_serving(tmp_path, caplog):
    publish(tmp_path, "voc", 1, 1)

    async def body(client, manager):
        publish(tmp_path, "voc", 2, 2, name=".tmp-2")  # not renamed yet
        await manager.sync()
        before_rename = await client.post("/segment", content=png_bytes())
        publish(tmp_path, "voc", 3, 3, corrupt=True)
        await manager.sync()
        after_corrupt = await client.post("/segment", content=png_bytes())
        ready = await client.get("/readyz")
        listing = (await client.get("/v1/models")).json()
        failed_pinned = await client.post("/v1/models/voc/versions/3/segment",
                                          content=png_bytes())
        unknown = await client.post("/v1/models/coco/segment", content=png_bytes())
        metrics = (await client.get("/metrics")).text
        await manager.sync()  # the same broken directory is not retried on every poll
        again = (await client.get("/metrics")).text
        return (before_rename, after_corrupt, ready, listing, failed_pinned, unknown,
                metrics, again)

    app = create_app(repository_settings(tmp_path), loader=fake_loader, handle_signals=False)
    (before_rename, after_corrupt, ready, listing, failed_pinned, unknown, metrics,
     again) = asyncio.run(with_app(app, body))
    assert mask_value(before_rename) == 1
    assert mask_value(after_corrupt) == 1 and after_corrupt.headers["x-atrous-model"] == "voc/1"
    assert ready.status_code == 200
    versions = {v["version"]: v for v in listing["models"][0]["versions"]}
    assert set(versions) == {1, 3}  # .tmp-2 was never seen
    assert versions[3]["state"] == "failed" and "JSONDecodeError" in versions[3]["reason"]
    assert str(tmp_path) not in json.dumps(listing)
    assert failed_pinned.status_code == 503 and failed_pinned.json()["error"]["code"] == "not_ready"
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    assert 'atrous_model_loads_total{model="voc",outcome="failed"} 1.0' in metrics
    assert 'atrous_model_loads_total{model="voc",outcome="failed"} 1.0' in again
    assert any("voc/3: failed to load" in r.getMessage() for r in caplog.records)


def test_the_repository_api_needs_an_admin_key_and_keeps_the_default_model(tmp_path):
    publish(tmp_path, "voc", 1, 1)
    publish(tmp_path, "person", 1, 15)
    admin = {"Authorization": "Bearer admin-key"}

    async def body(client, manager):
        answers = {
            "no key": await client.post("/v2/repository/models/person/unload"),
            "api key": await client.post("/v2/repository/models/person/unload",
                                         headers={"Authorization": "Bearer user-key"}),
            "default": await client.post("/v2/repository/models/voc/unload", headers=admin),
            "unknown": await client.post("/v2/repository/models/coco/load", headers=admin),
            "unload": await client.post("/v2/repository/models/person/unload", headers=admin),
        }
        await manager.sync()  # as a poll would: an unloaded model stays unloaded
        answers["after"] = await client.post("/v1/models/person/segment", content=png_bytes(),
                                             headers={"Authorization": "Bearer user-key"})
        answers["load"] = await client.post("/v2/repository/models/person/load", headers=admin)
        answers["index"] = await client.post("/v2/repository/index", headers=admin)
        answers["again"] = await client.post("/v1/models/person/segment", content=png_bytes(),
                                             headers={"Authorization": "Bearer user-key"})
        return answers

    app = create_app(repository_settings(tmp_path, default_model="voc", api_keys="user-key",
                                         admin_keys="admin-key"),
                     loader=fake_loader, handle_signals=False)
    answers = asyncio.run(with_app(app, body))
    assert answers["no key"].status_code == 401
    assert answers["api key"].status_code == 403
    assert answers["api key"].json() == {"error": "this key may not load or unload models"}
    assert answers["default"].status_code == 409
    assert answers["unknown"].status_code == 404
    assert answers["unload"].status_code == 200
    assert answers["after"].status_code == 404, answers["after"].text
    assert answers["load"].status_code == 200
    assert {(e["name"], e["version"], e["state"]) for e in answers["index"].json()} == {
        ("voc", "1", "READY"), ("person", "1", "READY")}
    assert mask_value(answers["again"]) == 15


def test_a_training_run_is_served_as_the_network_it_recorded(tmp_path):
    from app.loader import model_config_for
    from model.checkpoints import RUN_CONFIG_FILE

    run = tmp_path / "run"
    run.mkdir()
    (run / RUN_CONFIG_FILE).write_text(json.dumps({"model": {
        "backbone": "cifar_resnet_20", "output_stride": 8, "num_classes": 5, "input_size": 65}}))
    base = Settings(model=None)
    served = model_config_for(base.model_copy(update={"checkpoint": run}))
    assert (served.backbone, served.output_stride, served.num_classes, served.input_size) == (
        "cifar_resnet_20", 8, 5, 65)
    resized = Settings(input_size=129).model_copy(update={"checkpoint": run})
    assert model_config_for(resized).input_size == 129  # how it is served may change
    contradicting = Settings(backbone="resnet_v1_50").model_copy(update={"checkpoint": run})
    with pytest.raises(ValueError, match="ATROUS_BACKBONE"):
        model_config_for(contradicting)


def test_loaded_versions_are_frozen_out_of_the_collector_and_an_unloaded_one_s_cycles_go(
        tmp_path):
    """A load ends with gc.freeze (what is loaded is not scanned again by every full
    collection); an unload collects frozen objects too, so a version's reference cycles do
    not outlive it, and what stays is frozen again."""
    import gc
    import weakref

    publish(tmp_path, "voc", 1, 1)
    publish(tmp_path, "extra", 1, 7)
    marks: dict[str, weakref.ref] = {}

    class Mark:
        pass

    def cyclic_loader(settings: Settings) -> LoadedModel:
        loaded = fake_loader(settings)
        mark = Mark()
        mark.cycle = (mark, loaded)  # only the collector can free it
        loaded.segmenter.mark = mark
        marks[settings.model.parent.name] = weakref.ref(mark)
        return loaded

    async def body(client, manager):
        frozen = gc.get_freeze_count()
        assert marks["extra"]() is not None
        await manager.unload_model("extra")
        await wait_for(lambda: marks["extra"]() is None)  # collected, though frozen
        await wait_for(lambda: gc.get_freeze_count() > 0)  # the rest frozen again
        return frozen

    app = create_app(repository_settings(tmp_path, default_model="voc"), loader=cyclic_loader,
                     handle_signals=False)
    try:
        assert asyncio.run(with_app(app, body)) > 0
        assert marks["voc"]() is not None  # the version still loaded stays
    finally:
        gc.unfreeze()
