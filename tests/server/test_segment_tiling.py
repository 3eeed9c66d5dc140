"""POST /segment beyond the single pass, on a real server and a painted model whose right
answer is known (tests/checkpoint_factory.py: red -> person 15, green -> aeroplane 1,
blue -> car 7, dark -> background 0).

The painted model is cifar_resnet_20 at output stride 16 with a 129 input, not ResNet-101
at 513: the geometry of the issue is kept in proportion.  A 3000 x 2000 image with stripes
48 px wide (3 cells of 16 px) shrinks by 513/3000 in the single pass, to 8 px stripes, under
one cell; here a 754 x 503 image (754 = 3000 x 129/513) with the same 48 px stripes shrinks
by the same factor.
"""

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from tests import checkpoint_factory

WIDTH, HEIGHT, STRIPE = 754, 503, 48
S = 129


@pytest.fixture(scope="module")
def server(server_factory, tiling_saved_model):
    return server_factory({"ATROUS_MODEL": str(tiling_saved_model),
                           "ATROUS_MAX_BATCH_SIZE": "8", "ATROUS_MAX_QUEUE": "64",
                           # 60 inputs of 129 x 129: the 54 tiles of the stripes fit, their
                           # flip (108) does not
                           "ATROUS_MAX_INFERENCE_PIXELS": str(60 * S * S)})


@pytest.fixture(scope="module")
def stripes():
    image, truth = checkpoint_factory.routed_stripes(WIDTH, HEIGHT, STRIPE)
    return png(image), truth


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def post(server, body: bytes, **params) -> httpx.Response:
    return httpx.post(server.url + "/segment", params=params, content=body, timeout=120)


def mask_of(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)))


def npz_of(response: httpx.Response) -> dict[str, np.ndarray]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-npz"
    with np.load(io.BytesIO(response.content)) as archive:
        return {name: archive[name] for name in archive.files}


def iou(mask: np.ndarray, truth: np.ndarray) -> dict[int, float]:
    return {c: float(((mask == c) & (truth == c)).sum() / ((mask == c) | (truth == c)).sum())
            for c in np.unique(truth).tolist()}


def timing(response: httpx.Response) -> dict[str, float]:
    parts = [p.strip().split(";dur=") for p in response.headers["server-timing"].split(",")]
    return {name: float(value) for name, value in parts}


def test_thin_stripes_lost_by_the_single_pass_are_recovered_by_tiling(server, stripes):
    body, truth = stripes
    single = iou(mask_of(post(server, body)), truth)
    assert max(single.values()) < 0.5, single  # stripes 8 px wide at 129: under a cell
    tiled_response = post(server, body, tiling="on")
    tiled = iou(mask_of(tiled_response), truth)
    assert min(tiled.values()) >= 0.8, tiled
    assert timing(tiled_response)["tiles"] == 54 and timing(tiled_response)["scales"] == 1
    auto = post(server, body, tiling="auto")  # 754 > 2 x 129: tiles too
    np.testing.assert_array_equal(mask_of(auto), mask_of(tiled_response))


def test_tiles_meet_without_seams(server, stripes):
    body, truth = stripes
    result = npz_of(post(server, body, tiling="on", format="probabilities"))
    keep = checkpoint_factory.interior(truth, margin=12)
    # right everywhere away from the stripes' own edges: no tile boundary shows
    np.testing.assert_array_equal(result["mask"][keep], truth[keep])
    # and the probabilities are continuous down the rows, across every horizontal tile
    # boundary (the stripes are vertical, so nothing should change along a column)
    planes = result["probabilities"].astype(int)
    vertical_jumps = np.abs(np.diff(planes, axis=1))[:, :, keep[0]]
    assert vertical_jumps.max() <= 2, vertical_jumps.max()


def test_probabilities_sum_to_one_and_their_argmax_is_the_png_mask(server, stripes):
    body, truth = stripes
    for params in ({}, {"tiling": "on"}):
        result = npz_of(post(server, body, format="probabilities", **params))
        planes = result["probabilities"].astype(int)
        assert planes.shape == (21, HEIGHT, WIDTH)
        assert result["class_ids"].tolist() == list(range(21))
        assert np.abs(planes.sum(0) - 255).max() <= 11  # 21 planes rounded: +-0.5 each
        png_mask = mask_of(post(server, body, **params))
        np.testing.assert_array_equal(result["mask"], png_mask)
        top = np.sort(planes, axis=0)
        clear = top[-1] > top[-2]  # where rounding leaves no tie
        np.testing.assert_array_equal(planes.argmax(0)[clear], png_mask[clear])
        confidence = mask_of(post(server, body, format="confidence", **params))
        assert confidence.dtype == np.uint8 and confidence.shape == (HEIGHT, WIDTH)
        np.testing.assert_array_equal(confidence, planes.max(0))


def symmetric_bands() -> tuple[np.ndarray, np.ndarray]:
    half, half_truth = checkpoint_factory.routed_bands(S // 2 + 1, S)
    return (np.concatenate([half, half[:, ::-1][:, 1:]], 1),
            np.concatenate([half_truth, half_truth[:, ::-1][:, 1:]], 1))


def test_flip_and_multi_scale_on_a_symmetric_input_equal_the_single_pass(server):
    image, truth = symmetric_bands()
    assert image.shape[:2] == (S, S) and (image == image[:, ::-1]).all()
    body = png(image)
    single = npz_of(post(server, body, format="probabilities"))
    flipped = npz_of(post(server, body, format="probabilities", flip="true"))
    np.testing.assert_array_equal(flipped["mask"], single["mask"])
    keep = checkpoint_factory.interior(truth, margin=16)
    np.testing.assert_array_equal(single["mask"][keep], truth[keep])
    response = post(server, body, format="probabilities", scales="0.5,1,1.5", flip="true")
    assert timing(response)["scales"] == 3 and timing(response)["tiles"] == 2 * (1 + 1 + 4)
    multi = npz_of(response)
    np.testing.assert_array_equal(multi["mask"][keep], single["mask"][keep])
    assert (multi["probabilities"][:, keep].max(0) >= 250).all()  # still confident there


def test_class_filters_send_other_classes_to_background_in_every_format(server):
    image, truth = symmetric_bands()
    body = png(image)
    wanted = {0, 15, 7}
    mask = mask_of(post(server, body, classes="person,7"))
    full = mask_of(post(server, body))
    assert set(np.unique(mask)) == wanted
    np.testing.assert_array_equal(mask, np.where(np.isin(full, [15, 7]), full, 0))
    summary = post(server, body, format="json", classes="person,7").json()
    assert {c["id"] for c in summary["classes"]} == wanted
    assert all(0.9 < c["confidence"] <= 1.0 for c in summary["classes"]), summary["classes"]
    result = npz_of(post(server, body, format="probabilities", classes="7,person"))
    assert result["class_ids"].tolist() == [0, 7, 15]
    assert result["labels"].tolist() == ["background", "car", "person"]
    np.testing.assert_array_equal(result["mask"], mask)
    assert np.abs(result["probabilities"].astype(int).sum(0) - 255).max() <= 2
    # the aeroplane band is "none of the requested classes" with certainty
    aeroplane = (truth == 1) & checkpoint_factory.interior(truth, margin=16)
    assert (result["probabilities"][0][aeroplane] >= 254).all()
    overlay = post(server, body, format="overlay", classes="person")
    assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/jpeg"


@pytest.mark.parametrize(("params", "named"), [
    ({"tiling": "sometimes"}, "'sometimes'"),
    ({"scales": "0.5,abc"}, "'abc'"),
    ({"scales": "3"}, "'3'"),
    ({"scales": ""}, "at least one"),
    ({"flip": "maybe"}, "'maybe'"),
    ({"classes": "person,unicorn"}, "'unicorn'"),
    ({"classes": "21"}, "'21'"),
    ({"format": "npy"}, "'npy'"),
])
def test_each_bad_option_is_a_422_that_names_the_value(server, params, named):
    response = post(server, png(np.zeros((8, 8, 3), np.uint8)), **params)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error" and named in error["message"], error
    assert next(iter(params)) in error["message"]  # and the parameter


def test_work_over_the_budget_is_a_413_before_any_tile_runs(server, stripes):
    body, _ = stripes
    before = httpx.get(server.url + "/metrics").text
    response = post(server, body, tiling="on", flip="true")
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "too_much_work"
    assert "108 model inputs" in error["message"] and "flip=true" in error["message"], error
    after = httpx.get(server.url + "/metrics").text

    def inputs(text: str) -> float:
        lines = [line for line in text.splitlines()
                 if line.startswith('atrous_model_inputs_total{model="default",'
                                 'output="probabilities",version="1"}')]
        return float(lines[0].split()[-1]) if lines else 0.0

    assert inputs(after) == inputs(before)


def test_the_sdk_gets_tiled_probabilities_for_the_requested_classes(server, stripes):
    from atrous_client import AtrousClient

    body, truth = stripes
    with AtrousClient(server.url) as client:
        result = client.segment(body, tiling="on", format="probabilities", classes=["person"])
        json_result = client.segment(body, tiling="on", format="json", classes=["person"])
    assert result.class_ids == (0, 15) and result.timings["tiles"] == 54
    person = result.probability("person")
    keep = checkpoint_factory.interior(truth, margin=12)
    assert (person[keep & (truth == 15)] > 0.95).all()
    assert (person[keep & (truth != 15)] < 0.05).all()
    np.testing.assert_array_equal(json_result.mask, result.mask)
    assert {c.id for c in json_result.classes} == {0, 15}
    for mine, theirs in zip(result.classes, json_result.classes, strict=True):
        assert mine.confidence == pytest.approx(theirs.confidence, abs=0.01)


def test_atrous_segment_through_the_server_writes_the_same_probabilities(server, stripes,
                                                                         tmp_path):
    from app.cli.main import main

    body, _ = stripes
    path = tmp_path / "stripes.png"
    path.write_bytes(body)
    assert main(["segment", str(path), "--url", server.url, "-o", str(tmp_path / "out"),
                 "--tiling", "on", "--format", "probabilities", "--classes", "person"]) == 0
    direct = npz_of(post(server, body, tiling="on", format="probabilities", classes="person"))
    with np.load(tmp_path / "out" / "stripes.npz") as archive:
        for name in ("probabilities", "class_ids", "labels", "mask"):
            np.testing.assert_array_equal(archive[name], direct[name])
    assert main(["segment", str(path), "--url", server.url, "-o", str(tmp_path / "conf"),
                 "--tiling", "on", "--format", "confidence"]) == 0
    with Image.open(tmp_path / "conf" / "stripes.png") as written:
        np.testing.assert_array_equal(
            np.asarray(written), mask_of(post(server, body, tiling="on", format="confidence")))
