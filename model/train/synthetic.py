"""A synthetic PASCAL VOC-format dataset: shapes of a few VOC classes on textured ground.

Each scene is a textured, noisy background with one to four objects; each class has
its own shape and a striped texture around its own hue (jittered per object), so a
small network can learn it in minutes on a CPU while still having to use texture and
context, not one pixel's colour.  As in VOC, a band of 255 ("ignore") surrounds every
object boundary.  Everything is drawn from ``numpy.random.default_rng((seed, index))``,
so a seed gives the same files on every machine.
"""

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from model.inference.labels import voc_colormap
from model.train.data import IGNORE_LABEL, IMAGES_DIR, LABELS_DIR, SPLITS_DIR


@dataclasses.dataclass(frozen=True)
class SyntheticClass:
    """A VOC class as the generator draws it."""

    label: int  # the VOC class id
    shape: str  # "triangle", "box", "ellipse" or "figure"
    hue: tuple[int, int, int]  # base RGB of the texture
    stripe_period: int  # pixels per stripe of the texture


CLASSES = (
    SyntheticClass(1, "triangle", (40, 170, 60), 6),    # aeroplane
    SyntheticClass(7, "box", (200, 50, 40), 4),         # car
    SyntheticClass(8, "ellipse", (230, 190, 40), 8),    # cat
    SyntheticClass(15, "figure", (60, 80, 210), 5),     # person
)
BORDER = 2  # half-width of the 255 band around boundaries (VOC's is about 5 px wide)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A muted gradient with low-contrast blotches and checks: float [H, W, 3]."""
    base = rng.uniform(70, 150, size=3)
    tilt = rng.uniform(-40, 40, size=(2, 3))
    ys = np.linspace(0, 1, height)[:, None, None]
    xs = np.linspace(0, 1, width)[None, :, None]
    ground = base + ys * tilt[0] + xs * tilt[1]
    coarse = rng.normal(128, 14, size=(max(2, height // 16), max(2, width // 16), 3))
    blotches = np.asarray(Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8)).resize(
        (width, height), Image.Resampling.BICUBIC), np.float32) - 128
    period = int(rng.integers(6, 14))
    checks = ((np.arange(height)[:, None] // period + np.arange(width)[None, :] // period) % 2)
    return np.asarray(ground + blotches + checks[..., None] * rng.uniform(-10, 10), np.float32)


def _texture(rng: np.random.Generator, cls: SyntheticClass, height: int,
             width: int) -> np.ndarray:
    """The class's striped texture around its (jittered) hue: float [H, W, 3]."""
    hue = np.array(cls.hue, np.float32) + rng.uniform(-25, 25, size=3)
    angle = rng.uniform(0, np.pi)
    ys, xs = np.mgrid[0:height, 0:width]
    phase = (xs * np.cos(angle) + ys * np.sin(angle)) / cls.stripe_period
    stripes = np.sign(np.sin(phase * np.pi))[..., None]
    return hue + stripes * rng.uniform(15, 30)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int],
                value: int) -> None:
    x0, y0, x1, y1 = box
    if shape == "triangle":
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=value)
    elif shape == "box":
        draw.rectangle(box, fill=value)
    elif shape == "ellipse":
        draw.ellipse(box, fill=value)
    else:  # a figure: a head over a rounded body
        head = (x1 - x0) // 2
        cx = (x0 + x1) // 2
        draw.ellipse((cx - head // 2, y0, cx + head // 2, y0 + head), fill=value)
        draw.rounded_rectangle((x0, y0 + head, x1, y1), radius=max(1, head // 3), fill=value)


def scene(seed: int, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic scene.

    Args:
        seed: dataset seed.
        index: image number within the dataset.
        size: longer side in pixels (the shorter is 75-100% of it).

    Returns:
        image: uint8 [H, W, 3]; label: uint8 [H, W] of VOC class ids, 0 background,
        255 around boundaries.
    """
    rng = np.random.default_rng((seed, index))
    short = int(rng.integers(int(size * 0.75), size + 1))
    height, width = (short, size) if rng.random() < 0.5 else (size, short)
    pixels = _background(rng, height, width)
    ids = np.zeros((height, width), np.uint8)
    for _ in range(int(rng.integers(1, 5))):
        cls = CLASSES[int(rng.integers(len(CLASSES)))]
        w = int(rng.integers(size // 5, size // 2))
        h = int(w * rng.uniform(1.4, 2.0)) if cls.shape == "figure" else int(
            w * rng.uniform(0.6, 1.2))
        h = min(h, height - 2)
        x0 = int(rng.integers(0, max(1, width - w)))
        y0 = int(rng.integers(0, max(1, height - h)))
        mask = Image.new("L", (width, height), 0)
        _draw_shape(ImageDraw.Draw(mask), cls.shape, (x0, y0, x0 + w, y0 + h), 1)
        inside = np.asarray(mask, bool)
        pixels[inside] = _texture(rng, cls, height, width)[inside]
        ids[inside] = cls.label
    pixels += rng.normal(0, 8, size=pixels.shape)
    image = np.clip(pixels, 0, 255).astype(np.uint8)
    label = ids.copy()
    window = 2 * BORDER + 1
    high = np.asarray(Image.fromarray(ids).filter(ImageFilter.MaxFilter(window)))
    low = np.asarray(Image.fromarray(ids).filter(ImageFilter.MinFilter(window)))
    label[high != low] = IGNORE_LABEL
    return image, label


def palette_png(label: np.ndarray) -> Image.Image:
    """A VOC-style palette PNG: pixel = class id, VOC colours, 255 drawn in VOC's cream."""
    image = Image.fromarray(label, mode="P")
    colours = voc_colormap(256).astype(np.uint8)
    colours[IGNORE_LABEL] = (224, 224, 192)
    image.putpalette(colours.reshape(-1).tolist())
    return image


def write_dataset(out: str | Path, *, train: int = 200, val: int = 50, size: int = 128,
                  seed: int = 0) -> Path:
    """Writes a VOC directory: JPEGImages, SegmentationClass, ImageSets/Segmentation.

    Train and val scenes never share an index, so val is held out.
    """
    if train < 1 or val < 0 or size < 33:
        raise ValueError(f"need train >= 1, val >= 0 and size >= 33, got {train}, {val}, {size}")
    out = Path(out)
    for folder in (IMAGES_DIR, LABELS_DIR, str(SPLITS_DIR)):
        (out / folder).mkdir(parents=True, exist_ok=True)
    names: dict[str, list[str]] = {"train": [], "val": []}
    for index in range(train + val):
        split = "train" if index < train else "val"
        name = f"synthetic_{index:06d}"
        image, label = scene(seed, index, size)
        Image.fromarray(image).save(out / IMAGES_DIR / f"{name}.jpg", quality=92)
        palette_png(label).save(out / LABELS_DIR / f"{name}.png")
        names[split].append(name)
    for split, listed in names.items():
        (out / SPLITS_DIR / f"{split}.txt").write_text("".join(f"{n}\n" for n in listed))
    (out / SPLITS_DIR / "trainval.txt").write_text(
        "".join(f"{n}\n" for n in names["train"] + names["val"]))
    return out
