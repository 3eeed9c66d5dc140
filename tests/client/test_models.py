"""Several models in the SDK (``model=``, ``version=``, ``list_models()``) and in
``atrous segment --url --model-name``, against the real keyed server of conftest (its one
model is ``default``, version 1)."""

import asyncio

import numpy as np
import pytest
from atrous_client import APIStatusError, AsyncAtrousClient, AtrousClient, ModelStatus, ModelVersion
from PIL import Image

from tests.client.test_auth import bands_png
from tests.conftest import PAINTED_API_KEYS

KEY = PAINTED_API_KEYS[0]


def test_the_sdk_lists_models_and_segments_on_a_named_version(painted_server):
    with AtrousClient(painted_server.url, api_key=KEY) as client:
        (model,) = client.list_models()
        assert isinstance(model, ModelStatus)
        assert (model.name, model.default) == ("default", True)
        assert [(v.version, v.state) for v in model.versions] == [(1, "available")]
        assert isinstance(model.versions[0], ModelVersion) and model.versions[0].fingerprint
        plain = client.segment(bands_png())
    with AtrousClient(painted_server.url, api_key=KEY, model="default", version=1) as pinned:
        named = pinned.segment(bands_png())
        info = pinned.model_info()
    assert plain.model == named.model == "default/1"
    np.testing.assert_array_equal(named.mask, plain.mask)
    assert (info.name, info.version) == ("default", 1)
    with AtrousClient(painted_server.url, api_key=KEY, model="default", version=2,
                      max_retries=0) as missing, pytest.raises(APIStatusError) as error:
        missing.segment(bands_png())
    assert error.value.status_code == 404 and error.value.code == "model_not_found"
    with pytest.raises(ValueError, match="version= needs model="):
        AtrousClient(painted_server.url, version=1)

    async def listed():
        async with AsyncAtrousClient(painted_server.url, api_key=KEY, model="default") as c:
            return await c.list_models(), (await c.segment(bands_png())).model

    models, served = asyncio.run(listed())
    assert [m.name for m in models] == ["default"] and served == "default/1"


def test_atrous_segment_url_takes_a_model_name(painted_server, tmp_path, capsys):
    from app.cli.main import main

    image = tmp_path / "bands.png"
    image.write_bytes(bands_png())
    out = tmp_path / "masks"
    common = ["segment", str(image), "--url", painted_server.url, "--api-key", KEY,
              "-o", str(out)]
    assert main([*common, "--model-name", "default", "--model-version", "1"]) == 0
    with Image.open(out / "bands.png") as mask:
        assert set(np.unique(np.asarray(mask))) == {0, 1, 7, 15}
    assert main(["segment", str(image), "--model-name", "x", "-o", str(out)]) == 2
    assert "--model-name goes with --url" in capsys.readouterr().err
    (out / "bands.png").unlink()
    assert main([*common, "--model-name", "coco"]) == 1  # reported per image, then skipped
    assert not (out / "bands.png").exists()
