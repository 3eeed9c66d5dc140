"""Hot swaps under load against a real uvicorn process and real models.

Two tiny exports with hand-set weights that paint different classes (A: red -> 15, green
-> 1, blue -> 7; B: red -> 3, green -> 5, blue -> 9) are published into a repository
while client threads loop on ``/segment`` (single pass and ``tiling=on``) and on a
versioned URL: no answer may be other than 200, every mask must be the one its named
version gives, ``/readyz`` must stay 200.  Then a corrupt version (kept out, the old one
serving), the admin load API, an unload of the old versions' metrics, and a SIGTERM in
the middle of a swap (exit 0).
"""

import io
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import TILING_INPUT_SIZE

ADMIN = "swap-admin-key"
MODEL = "voc"
B_CLASSES = (3, 5, 9)


def export(root: Path, classes: tuple[int, int, int] | None) -> Path:
    """The colour-routing cifar_resnet_20 (129 input, OS 16), its red/green/blue routed to
    ``classes`` (None: the usual 15/1/7)."""
    from model.config import ModelConfig
    from model.export import export_saved_model
    from tests import checkpoint_factory

    config = ModelConfig(backbone="cifar_resnet_20", output_stride=16,
                         input_size=TILING_INPUT_SIZE)
    routed = checkpoint_factory.color_routing_values(config.backbone)

    def values(name: str, shape: list[int]) -> np.ndarray | None:
        if classes is not None and name == "logits/semantic/weights":
            value = np.zeros(shape, np.float32)
            for channel, cls in enumerate(classes):
                value[0, 0, channel, cls] = 1.0
            return value
        return routed(name, shape)

    checkpoint = checkpoint_factory.write_checkpoint(config, root / "ckpt" / "painted.ckpt",
                                                     values=values)
    export_saved_model(config, root / "export", checkpoint=checkpoint)
    return root / "export"


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("swap-models")
    return {"A": export(base / "a", None), "B": export(base / "b", B_CLASSES)}


def publish(repository: Path, version: int, source: Path, *, corrupt: bool = False,
            rename: bool = True) -> Path:
    """Copies ``source`` under a temporary name (``corrupt``: its graph overwritten with
    garbage), then renames it into place, as a publisher should."""
    staging = repository / MODEL / f".tmp-{version}"
    shutil.copytree(source, staging)
    if corrupt:
        (staging / "saved_model.pb").write_bytes(b"not a protobuf")
    if rename:
        staging.rename(repository / MODEL / str(version))
    return staging


def picture() -> bytes:
    """300 x 200, red / green / blue bands on black: tiled at 129, and every class shows."""
    pixels = np.zeros((200, 300, 3), np.uint8)
    pixels[:, :100, 0] = 255
    pixels[:, 100:200, 1] = 255
    pixels[50:150, 200:, 2] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def mask_of(response: httpx.Response) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(response.content)))


def wait_until(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached in {timeout} s"
        time.sleep(0.05)


def versions(url: str) -> dict[int, str]:
    listing = httpx.get(url + "/v1/models", timeout=10).json()
    model = next((m for m in listing["models"] if m["name"] == MODEL), {"versions": []})
    return {v["version"]: v["state"] for v in model["versions"]}


class Load:
    """Client threads looping on the routes until stopped; every answer recorded."""

    ROUTES = {"single": ("/segment", {}), "tiled": ("/segment", {"tiling": "on"}),
              "pinned": (f"/v1/models/{MODEL}/versions/1/segment", {})}

    def __init__(self, url: str, image: bytes) -> None:
        self.url, self.image = url, image
        self.answers: list[tuple[str, int, str, bytes]] = []
        self.readyz: list[int] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(name,), daemon=True)
                         for name in self.ROUTES]
        self._threads.append(threading.Thread(target=self._ready_loop, daemon=True))

    def _loop(self, name: str) -> None:
        path, params = self.ROUTES[name]
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self._stop.is_set():
                response = client.post(path, params=params, content=self.image)
                self.answers.append((name, response.status_code,
                                     response.headers.get("x-atrous-model", ""),
                                     response.content))

    def _ready_loop(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self._stop.is_set():
                self.readyz.append(client.get("/readyz").status_code)
                time.sleep(0.05)

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


def test_hot_swap_under_load(server_factory, tmp_path, exports):
    repository = tmp_path / "repository"
    (repository / MODEL).mkdir(parents=True)
    publish(repository, 1, exports["A"])
    server = server_factory({"ATROUS_MODEL_REPOSITORY": str(repository),
                             "ATROUS_VERSION_POLICY": "latest:2",
                             "ATROUS_REPOSITORY_POLL_S": "0.3",
                             "ATROUS_ADMIN_KEYS": ADMIN,
                             "ATROUS_MAX_BATCH_SIZE": "2",
                             "ATROUS_SHUTDOWN_GRACE_S": "10"})
    url, image = server.url, picture()
    references = {("voc/1", "single"): mask_of(httpx.post(url + "/segment", content=image)),
                  ("voc/1", "tiled"): mask_of(httpx.post(url + "/segment", content=image,
                                                         params={"tiling": "on"}))}
    assert set(np.unique(references["voc/1", "single"])) == {0, 1, 7, 15}

    # A directory being copied is not a version: only the rename publishes it.
    staging = publish(repository, 2, exports["B"], rename=False)
    time.sleep(1.0)  # three polls
    assert versions(url) == {1: "available"}

    with Load(url, image) as load:
        time.sleep(0.5)
        staging.rename(repository / MODEL / "2")
        wait_until(lambda: any(a[2] == "voc/2" for a in load.answers if a[0] == "single"),
                   what="version 2 serving /segment")
        seen = len(load.answers)
        wait_until(lambda: len(load.answers) > seen + 6, what="more answers")
    references["voc/2", "single"] = mask_of(httpx.post(url + f"/v1/models/{MODEL}/segment",
                                                       content=image))
    references["voc/2", "tiled"] = mask_of(httpx.post(
        url + f"/v1/models/{MODEL}/versions/2/segment", content=image, params={"tiling": "on"}))
    assert set(np.unique(references["voc/2", "single"])) == {0, *B_CLASSES}

    statuses = Counter(status for _, status, _, _ in load.answers)
    assert statuses.keys() == {200}, statuses
    assert set(load.readyz) == {200}
    served = Counter((name, model) for name, _, model, _ in load.answers)
    assert served[("single", "voc/1")] and served[("single", "voc/2")], served
    assert {model for name, _, model, _ in load.answers if name == "pinned"} == {"voc/1"}
    for name, _, model, body in load.answers:
        kind = "single" if name == "pinned" else name
        np.testing.assert_array_equal(mask_of(httpx.Response(200, content=body)),
                                      references[model, kind], err_msg=f"{name} on {model}")

    # A corrupt version is marked failed; the old ones keep serving; the API retries it.
    publish(repository, 3, exports["A"], corrupt=True)
    wait_until(lambda: versions(url).get(3) == "failed", what="version 3 failed")
    after = httpx.post(url + "/segment", content=image)
    assert after.status_code == 200 and after.headers["x-atrous-model"] == "voc/2"
    assert httpx.get(url + "/readyz").status_code == 200
    load_api = f"{url}/v2/repository/models/{MODEL}/load"
    assert httpx.post(load_api).status_code == 401
    retried = httpx.post(load_api, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60)
    assert retried.status_code == 400 and "failed to load" in retried.json()["error"]
    assert str(repository) not in retried.text + httpx.get(url + "/v1/models").text
    metrics = httpx.get(url + "/metrics").text
    assert f'atrous_model_loads_total{{model="{MODEL}",outcome="failed"}} 2.0' in metrics
    # The latest two are now 3 (failed) and 2 (serving): version 1 is unloaded, its series
    # gone with it.
    wait_until(lambda: set(versions(url)) == {2, 3}, what="version 1 unloaded")
    metrics = httpx.get(url + "/metrics").text
    assert 'version="1"' not in metrics and 'atrous_ready{model="voc",version="2"} 1.0' in metrics

    # Version 4 (A again) and the failed 3 are the latest two: 2 is unloaded.
    publish(repository, 4, exports["A"])
    wait_until(lambda: set(versions(url)) == {3, 4}, what="version 2 unloaded")
    now = httpx.post(url + "/segment", content=image)
    assert now.headers["x-atrous-model"] == "voc/4"
    np.testing.assert_array_equal(mask_of(now), references["voc/1", "single"])
    metrics = httpx.get(url + "/metrics").text
    assert 'version="1"' not in metrics and 'version="2"' not in metrics
    assert 'atrous_ready{model="voc",version="4"} 1.0' in metrics
    # The corrupt SavedModel's failed conversion left the server's own logs on.
    assert "voc/4: available" in server.log

    # SIGTERM as version 5 is picked up (loading, warming up or just swapped in): the
    # server drains and exits 0.
    publish(repository, 5, exports["B"])
    wait_until(lambda: 5 in versions(url), timeout=10, what="version 5 seen")
    assert server.stop() == 0, server.log
    # A load still running at shutdown is let finish (within the grace) rather than aborted
    # under ("terminate called without an active exception", status -6).
    assert "terminate called" not in server.log
