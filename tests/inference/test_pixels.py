"""model.inference.pixels: a Pillow image's pixels without the copy, the same numbers."""

import gc

import numpy as np
import pytest
from PIL import Image

from model.inference import pixels

RNG = np.random.default_rng(7)


def _image(mode: str, size: tuple[int, int]) -> Image.Image:
    rgb = RNG.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(rgb).convert(mode)


@pytest.mark.parametrize("mode", ["L", "P", "RGB", "RGBA"])
@pytest.mark.parametrize("size", [(1, 1), (3, 7), (640, 480), (129, 1)])
def test_shared_is_numpys_own_reading(mode: str, size: tuple[int, int]) -> None:
    image = _image(mode, size)
    shared = pixels.shared(image)
    assert shared is not None
    expected = np.asarray(image)
    assert shared.dtype == np.uint8 and shared.shape == expected.shape
    np.testing.assert_array_equal(shared, expected)


def test_shared_reads_pillows_memory_not_a_copy() -> None:
    image = _image("RGB", (64, 48))
    first, second = pixels.shared(image), pixels.shared(image)
    assert first is not None and second is not None
    assert np.shares_memory(first, second)  # two reads, one memory: Pillow's
    assert not np.shares_memory(np.asarray(image), np.asarray(image))
    with pytest.raises(ValueError):
        first[0, 0, 0] = 1  # read-only: the image's pixels are not the caller's to change


def test_the_view_keeps_the_pixels_alive_after_the_image_is_gone() -> None:
    image = _image("RGB", (320, 240))
    expected = np.asarray(image).copy()
    view = pixels.shared(image)
    del image
    gc.collect()
    # Fresh images of the same size would reuse freed memory: they must not show through.
    others = [Image.new("RGB", (320, 240), (255, 0, 255)) for _ in range(8)]
    np.testing.assert_array_equal(view, expected)
    assert len(others) == 8


@pytest.mark.parametrize("mode", ["1", "I;16", "I", "F", "LA", "CMYK"])
def test_other_layouts_are_not_shared_and_view_copies_them(mode: str) -> None:
    image = _image(mode, (31, 17))
    assert pixels.shared(image) is None
    np.testing.assert_array_equal(pixels.view(image), np.asarray(image))


def test_an_image_bigger_than_pillows_block_falls_back_to_the_copy() -> None:
    image = _image("RGB", (2100, 2100))  # 17.6 MB in Pillow's memory: over its 16 MB block
    assert pixels.shared(image) is None
    np.testing.assert_array_equal(pixels.view(image), np.asarray(image))


def test_an_empty_image_is_an_empty_array() -> None:
    image = Image.new("RGB", (0, 5))
    assert pixels.shared(image) is None
    assert pixels.view(image).shape == np.asarray(image).shape


def test_a_lazily_opened_image_is_decoded_by_the_export(tmp_path) -> None:
    path = tmp_path / "a.png"
    _image("RGB", (40, 30)).save(path)
    with Image.open(path) as image:  # not decoded yet
        shared = pixels.shared(image)
        assert shared is not None
        np.testing.assert_array_equal(shared, np.asarray(Image.open(path).convert("RGB")))
