"""Untrusted image bytes to an RGB PIL image (Pillow and numpy only, no TensorFlow).

Used by the server for every upload and by the offline ``atrous segment`` command.
Pillow is permissive in ways a service cannot afford, so ``load_image``:

* sniffs the format from magic bytes and lets Pillow try only that one decoder (no SVG,
  PDF, PSD, EPS... ever reach Pillow's plugin zoo);
* checks width x height from the header, before any pixel is decoded: a 48 KB PNG can
  declare 20000 x 20000 pixels, and Pillow's own bomb check only starts at 89 MP;
* turns every exception the decoders raise (OSError, but also TypeError, ValueError,
  OverflowError, struct.error... on fuzzed files) into one ``CorruptImageError``;
* applies the EXIF orientation, so the result is the image as it is displayed;
* converts every mode to 8-bit RGB correctly: alpha is composited over white, 16-bit
  greyscale is scaled (``convert("RGB")`` clips it to white), CMYK is converted, the
  first frame of an animation is used.
"""

import io

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "FORMATS",
    "CorruptImageError",
    "ImageError",
    "ImageTooLargeError",
    "UnsupportedImageError",
    "load_image",
    "load_image_for_model",
    "sniff_format",
]

# Pillow format name -> the magic bytes that announce it.
FORMATS: dict[str, tuple[bytes, ...]] = {
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "JPEG": (b"\xff\xd8\xff",),
    "GIF": (b"GIF87a", b"GIF89a"),
    "BMP": (b"BM",),
    "TIFF": (b"II*\x00", b"MM\x00*"),
    # WebP is RIFF....WEBP; checked separately below.
}

# Colour a transparent pixel is shown on (a white page, as a browser would show it).
_BACKGROUND = (255, 255, 255)


class ImageError(ValueError):
    """The bytes are not an image this service can segment."""


class UnsupportedImageError(ImageError):
    """Not one of the accepted formats (PNG, JPEG, WebP, GIF, BMP, TIFF)."""


class CorruptImageError(ImageError):
    """An accepted format, but truncated, corrupt or otherwise undecodable."""


class ImageTooLargeError(ImageError):
    """Width x height over the limit (known from the header, before decoding)."""

    def __init__(self, pixels: int, max_pixels: int, size: tuple[int, int] | None = None) -> None:
        shape = f"{size[0]}x{size[1]} = " if size else ""
        super().__init__(f"image is {shape}{pixels} pixels; the limit is {max_pixels}")
        self.pixels, self.max_pixels, self.size = pixels, max_pixels, size


def sniff_format(data: bytes) -> str | None:
    """The Pillow format name announced by the magic bytes, or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for name, magics in FORMATS.items():
        if any(data.startswith(magic) for magic in magics):
            return name
    return None


def load_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decodes untrusted bytes into an RGB image in its displayed (EXIF) orientation.

    Args:
        data: the encoded image (PNG, JPEG, WebP, GIF, BMP or TIFF).
        max_pixels: largest width x height accepted; checked before decoding.

    Returns:
        a loaded PIL image of mode ``RGB``.

    Raises:
        UnsupportedImageError: not an accepted format (including empty bytes).
        ImageTooLargeError: more than ``max_pixels`` pixels.
        CorruptImageError: the decoder failed, for whatever reason.
    """
    image, _ = _load(data, max_pixels, None)
    return image


def peek_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as displayed (EXIF orientation applied), from the header alone;
    None when the header cannot be read (decoding will then say why)."""
    fmt = sniff_format(data)
    if fmt is None:
        return None
    try:
        image = _open(data, fmt)
        width, height = image.size
        swapped = _orientation(image) in (5, 6, 7, 8)
    except Exception:  # noqa: BLE001 - fuzzed headers raise anything
        return None
    return (height, width) if swapped else (width, height)


def load_image_for_model(data: bytes, *, max_pixels: int,
                         input_size: int) -> tuple[Image.Image, tuple[int, int]]:
    """Like ``load_image``, but only as sharp as a model of ``input_size`` needs.

    A JPEG is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling) when its longer
    side stays at least ``input_size``: a 12 MP photo decodes and letterboxes about 3x
    faster, and the letterboxed canvas barely changes (it is downsampled either way).

    Returns:
        the RGB image (possibly reduced) in displayed orientation, and the displayed
        (width, height) of the full image -- the size the mask must have.

    Raises:
        the same errors as ``load_image``.
    """
    return _load(data, max_pixels, input_size)


def _load(data: bytes, max_pixels: int,
          input_size: int | None) -> tuple[Image.Image, tuple[int, int]]:
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedImageError(
            "not a supported image (accepted: PNG, JPEG, WebP, GIF, BMP, TIFF)")
    try:
        image = _open(data, fmt)
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(_declared_pixels(str(e)), max_pixels) from None
    except Exception as e:  # noqa: BLE001 - fuzzed headers raise anything
        raise CorruptImageError(f"corrupt {fmt} image: {_describe(e)}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise CorruptImageError(f"corrupt {fmt} image: size {width}x{height}")
    if width * height > max_pixels:
        raise ImageTooLargeError(width * height, max_pixels, (width, height))
    try:
        if input_size is not None and fmt == "JPEG":
            _draft(image, input_size)
        orientation = _orientation(image)
        swapped = orientation in (5, 6, 7, 8)
        image.load()
        if orientation != 1:  # upright images (most) skip exif_transpose's full copy
            image = _exif_transposed(image)
        image = _to_rgb(image)
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated data, bad tiles, bad palettes...
        raise CorruptImageError(f"corrupt {fmt} image: {_describe(e)}") from None
    return image, ((height, width) if swapped else (width, height))


def _draft(image: Image.Image, input_size: int) -> None:
    """Asks libjpeg for the smallest DCT scale whose longer side is still >= input_size."""
    width, height = image.size
    longer = max(width, height)
    if longer <= 2 * input_size:
        return
    # draft() picks the largest reduction whose result is at least the requested size.
    scale = input_size / longer
    image.draft(image.mode if image.mode in ("RGB", "L") else None,
                (max(1, int(width * scale)), max(1, int(height * scale))))


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(0x0112, 1)
        return int(value) if isinstance(value, int) else 1
    except Exception:  # noqa: BLE001 - a broken EXIF block means "as stored"
        return 1


def _open(data: bytes, fmt: str) -> Image.Image:
    # Pillow reads the header here and raises DecompressionBombError beyond twice its own
    # limit (179 MP); nothing is decoded yet.
    return Image.open(io.BytesIO(data), formats=[fmt])


def _declared_pixels(message: str) -> int:
    # Pillow only says "Image size (N pixels) exceeds limit of M pixels ...".
    digits = "".join(ch if ch.isdigit() else " " for ch in message).split()
    return int(digits[0]) if digits else 0


def _describe(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text[:200]


def _exif_transposed(image: Image.Image) -> Image.Image:
    try:
        transposed = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not cost the image
        return image
    return transposed if transposed is not None else image


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit greyscale: scale 0..65535 to 0..255 (convert("RGB") would clip to white).
        values = np.asarray(image, dtype=np.float64)
        grey = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "F":
        # Floating-point TIFF: [0, 1] if it looks normalised, else taken as 0..255.
        values = np.asarray(image, dtype=np.float64)
        values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
        if values.size and values.max() <= 1.0:
            values = values * 255.0
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("L", "1", "P", "CMYK", "YCbCr", "RGBX"):
        return image.convert("RGB")
    if mode == "LAB":
        return _lab_to_rgb(image)
    raise UnsupportedImageError(f"unsupported pixel mode {mode}")


def _lab_to_rgb(image: Image.Image) -> Image.Image:
    # Pillow has no direct LAB -> RGB conversion; go through ImageCms.
    from PIL import ImageCms

    transform = ImageCms.buildTransform(ImageCms.createProfile("LAB"),
                                        ImageCms.createProfile("sRGB"), "LAB", "RGB")
    result = ImageCms.applyTransform(image, transform)
    assert result is not None
    return result
