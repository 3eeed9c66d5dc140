"""Response encoders: palette PNG, COCO RLE (checked against pycocotools), overlay."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from model.inference.contract import ModelMetadata
from model.inference.encoding import mask_png, overlay_jpeg, summary
from model.inference.labels import class_labels, voc_colormap

coco = pytest.importorskip("pycocotools.mask")

METADATA = ModelMetadata(
    backbone="resnet_v1_101", output_stride=16, num_classes=21, head="logits",
    input_size=513, precision="fp32", trained=True, weights="x.ckpt",
    labels=tuple(class_labels(21)),
    colors=tuple(tuple(int(c) for c in rgb) for rgb in voc_colormap(21)),
    tensorflow_version="2.21.0")


def masks():
    rng = np.random.default_rng(0)
    yield np.zeros((1, 1), np.uint8)
    yield np.full((3, 7), 20, np.uint8)
    yield rng.integers(0, 21, (37, 23)).astype(np.uint8)  # many short runs
    blocks = rng.integers(0, 4, (4, 5)).astype(np.uint8)
    yield np.kron(blocks, np.ones((30, 40), np.uint8))  # long runs, counts > 2**10
    yield np.kron(rng.integers(0, 2, (2, 2)), np.ones((600, 700), np.int64)).astype(np.uint8)


@pytest.mark.parametrize("mask", list(masks()), ids=lambda m: "x".join(map(str, m.shape)))
def test_rle_is_byte_identical_to_pycocotools(mask):
    body = summary(mask, METADATA)
    assert [c["id"] for c in body["classes"]] == np.unique(mask).tolist()
    for entry in body["classes"]:
        selected = (mask == entry["id"]).astype(np.uint8)
        expected = coco.encode(np.asfortranarray(selected))
        assert entry["rle"]["counts"].encode() == expected["counts"]
        assert entry["rle"]["size"] == list(expected["size"])
        assert coco.area(expected) == entry["pixels"]
        assert entry["bbox"] == coco.toBbox(expected).astype(int).tolist()


def test_mask_png_is_mode_p_with_class_ids_as_pixels_and_voc_palette():
    mask = np.arange(21, dtype=np.uint8).repeat(3).reshape(7, 9)
    image = Image.open(io.BytesIO(mask_png(mask)))
    assert image.mode == "P" and image.size == (9, 7)
    assert (np.asarray(image) == mask).all()
    assert image.getpalette()[15 * 3:16 * 3] == [192, 128, 128]


def test_summary_embeds_the_same_png():
    mask = np.array([[0, 15], [15, 15]], np.uint8)
    body = summary(mask, METADATA)
    assert base64.b64decode(body["mask_png"]) == mask_png(mask)
    person = body["classes"][1]
    assert (person["label"], person["pixels"], person["fraction"]) == ("person", 3, 0.75)
    assert person["bbox"] == [0, 0, 2, 2]


def test_overlay_blends_half_and_half():
    image = Image.new("RGB", (4, 2), (200, 200, 200))
    mask = np.full((2, 4), 15, np.uint8)  # person: (192, 128, 128)
    out = np.asarray(Image.open(io.BytesIO(overlay_jpeg(image, mask)))).astype(int)
    assert np.abs(out[1, 1] - [196, 164, 164]).max() <= 6
