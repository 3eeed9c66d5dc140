"""model.inference.imaging: untrusted bytes to RGB, every trap Pillow leaves open."""

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from model.inference.imaging import (
    CorruptImageError,
    ImageTooLargeError,
    UnsupportedImageError,
    load_image,
    sniff_format,
)

MAX = 40_000_000


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def huge_png(width: int, height: int) -> bytes:
    """A valid, highly compressed 1-bit PNG declaring width x height (tens of KB)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(min(height, 64)))
    data += compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("fmt,magic", [("PNG", "PNG"), ("JPEG", "JPEG"), ("WEBP", "WEBP"),
                                       ("GIF", "GIF"), ("BMP", "BMP"), ("TIFF", "TIFF")])
def test_every_accepted_format_decodes_to_rgb(fmt, magic):
    image = Image.new("RGB", (7, 5), (200, 30, 40))
    data = encode(image, fmt)
    assert sniff_format(data) == magic
    out = load_image(data, max_pixels=MAX)
    assert out.mode == "RGB" and out.size == (7, 5)


@pytest.mark.parametrize("data", [
    b"", b"hello world", b"%PDF-1.4\n%...", b'<svg xmlns="http://www.w3.org/2000/svg"/>',
    b"8BPS\x00\x01", b"\x00\x00\x01\x00",  # PSD, ICO: Pillow could, we don't
])
def test_non_images_are_unsupported(data):
    with pytest.raises(UnsupportedImageError):
        load_image(data, max_pixels=MAX)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF", "GIF"])
def test_truncated_files_are_corrupt(fmt):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = encode(image, fmt)
    with pytest.raises(CorruptImageError):
        load_image(data[: len(data) // 2], max_pixels=MAX)


def test_fuzzed_headers_never_escape_as_other_exceptions():
    rng = np.random.default_rng(1)
    seeds = [encode(Image.new("RGB", (16, 16), (1, 2, 3)), fmt)
             for fmt in ("PNG", "JPEG", "TIFF", "GIF", "BMP", "WEBP")]
    for seed in seeds:
        for _ in range(60):
            data = bytearray(seed)
            for index in rng.integers(4, len(data), 6):
                data[index] = int(rng.integers(0, 256))
            try:
                image = load_image(bytes(data), max_pixels=MAX)
            except (CorruptImageError, UnsupportedImageError, ImageTooLargeError):
                continue
            assert image.mode == "RGB"


def test_pixel_cap_is_checked_from_the_header_fast():
    data = huge_png(20_000, 20_000)
    assert len(data) < 100_000
    start = time.monotonic()
    with pytest.raises(ImageTooLargeError) as info:
        load_image(data, max_pixels=MAX)
    assert time.monotonic() - start < 1.0
    assert info.value.pixels == 400_000_000


def test_pixel_cap_reports_the_declared_size():
    with pytest.raises(ImageTooLargeError) as info:
        load_image(huge_png(8_000, 6_000), max_pixels=MAX)
    assert info.value.size == (8_000, 6_000)


def test_beyond_pillows_bomb_limit_is_too_large_not_corrupt():
    with pytest.raises(ImageTooLargeError):
        load_image(huge_png(30_000, 30_000), max_pixels=MAX)


def test_alpha_is_composited_over_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    out = np.asarray(load_image(encode(rgba, "PNG"), max_pixels=MAX))
    assert tuple(out[0, 0]) == (0, 0, 255)
    assert tuple(out[3, 3]) == (255, 255, 255)


@pytest.mark.parametrize("mode,value,expected", [
    ("L", 77, (77, 77, 77)), ("LA", (77, 255), (77, 77, 77)), ("1", 1, (255, 255, 255)),
    ("P", 3, None),
])
def test_grey_bilevel_and_palette_modes(mode, value, expected):
    image = Image.new(mode, (3, 2), value)
    if mode == "P":
        image.putpalette([0, 0, 0, 10, 20, 30, 40, 50, 60, 70, 80, 90] + [0] * 756)
        expected = (70, 80, 90)
    out = np.asarray(load_image(encode(image, "PNG"), max_pixels=MAX))
    assert tuple(out[1, 2]) == expected


def test_sixteen_bit_png_is_scaled_not_clipped():
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)  # mode I;16
    assert image.mode == "I;16"
    out = np.asarray(load_image(encode(image, "PNG"), max_pixels=MAX))
    assert out[0, :, 0].tolist() == [0, 100, 255]


def test_cmyk_jpeg_converts():
    image = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    out = np.asarray(load_image(encode(image, "JPEG", quality=95), max_pixels=MAX))
    red, green, blue = out[4, 4].astype(int)
    assert red > 200 and green < 60 and blue < 60


def test_exif_rotation_gives_the_displayed_orientation():
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 10, 20))  # white stripe on the stored left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    out = load_image(encode(image, "JPEG", exif=exif.tobytes(), quality=95), max_pixels=MAX)
    assert out.size == (20, 40)
    pixels = np.asarray(out)
    assert pixels[2, 10].mean() > 200 and pixels[-2, 10].mean() < 50  # left became top


def test_first_frame_of_an_animated_gif():
    frames = [Image.new("RGB", (6, 6), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    out = np.asarray(load_image(buffer.getvalue(), max_pixels=MAX))
    assert tuple(out[3, 3]) == (255, 0, 0)


@pytest.mark.parametrize("size", [(1, 1), (1, 10_000), (10_000, 1)])
def test_degenerate_shapes(size):
    out = load_image(encode(Image.new("RGB", size, (9, 9, 9)), "PNG"), max_pixels=MAX)
    assert out.size == size


def test_load_image_for_model_decodes_big_jpegs_at_reduced_scale():
    from model.inference.imaging import load_image_for_model

    exif = Image.Exif()
    exif[0x0112] = 6
    photo = Image.new("RGB", (4000, 3000), (200, 20, 20))
    data = encode(photo, "JPEG", exif=exif.tobytes())
    image, size = load_image_for_model(data, max_pixels=MAX, input_size=513)
    assert size == (3000, 4000)  # displayed (rotated) full size
    assert image.mode == "RGB" and image.size == (750, 1000)  # 1/4 scale, still >= 513
    assert np.abs(np.asarray(image)[500, 300].astype(int) - (200, 20, 20)).max() < 8


@pytest.mark.parametrize("fmt,size", [("PNG", (4000, 3000)), ("JPEG", (900, 600))])
def test_load_image_for_model_keeps_what_it_cannot_or_need_not_reduce(fmt, size):
    from model.inference.imaging import load_image_for_model

    data = encode(Image.new("RGB", size, (1, 2, 3)), fmt)
    image, full = load_image_for_model(data, max_pixels=MAX, input_size=513)
    assert image.size == full == size
