"""A checkpoint served end to end: exported (and cached) at start, then the masks that its
hand-set weights must give, through HTTP, in the displayed (EXIF) orientation."""

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from tests import checkpoint_factory

# Small but a real slim ResNet v1 with atrous units: fast to export at start.
ENV = {"ATROUS_BACKBONE": "resnet_v1_50", "ATROUS_OUTPUT_STRIDE": "8",
       "ATROUS_INPUT_SIZE": "129", "ATROUS_MAX_BATCH_SIZE": "2"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from model.config import ModelConfig

    config = ModelConfig(backbone="resnet_v1_50", output_stride=8, input_size=129)
    root = tmp_path_factory.mktemp("ckpt")
    return checkpoint_factory.write_checkpoint(config, root / "resnet_v1_50.ckpt",
                                               values=checkpoint_factory.color_routing_value)


def test_a_checkpoint_is_exported_at_start_and_segments_correctly(server_factory, checkpoint,
                                                                  tmp_path):
    cache = tmp_path / "cache"
    server = server_factory({**ENV, "ATROUS_CHECKPOINT": checkpoint,
                             "ATROUS_CACHE_DIR": str(cache), "ATROUS_FAST_JPEG_DECODE": "true"})
    info = httpx.get(server.url + "/v1/model").json()
    assert info["trained"] is True and info["weights"].endswith("resnet_v1_50.ckpt"), info
    assert [p.name for p in cache.iterdir() if (p / "saved_model.pb").exists()]

    # 800 x 480: big enough that fast decoding reads the JPEG at 1/4 scale (DCT) for the
    # 129 input; the routed mask must still be right.
    image, expected = checkpoint_factory.routed_bands(800, 480)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: the bands become horizontal
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=100, exif=exif.tobytes())
    response = httpx.post(server.url + "/segment", content=buffer.getvalue(), timeout=60)
    assert response.status_code == 200, response.text
    mask = np.asarray(Image.open(io.BytesIO(response.content)))
    displayed = np.rot90(expected, k=-1)  # what a viewer shows, 480 wide x 800 high
    assert mask.shape == displayed.shape == (800, 480)
    keep = checkpoint_factory.interior(displayed, margin=48)
    np.testing.assert_array_equal(mask[keep], displayed[keep])
    assert set(np.unique(mask)) == {0, 1, 7, 15}
