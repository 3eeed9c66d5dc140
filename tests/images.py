"""Real-looking test images, made here (no downloads), and how alike two sets of masks are."""

import io

import numpy as np
from PIL import Image, ImageDraw


def photo_like(width: int, height: int, seed: int) -> Image.Image:
    """A gradient background with noise, and overlapping shapes in saturated and muddy
    colours: edges at every angle and colours near the routing network's decision lines."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = rng.uniform(0, 120, 3) + rng.uniform(-60, 60, 3) * (x / width)[..., None]
    base = base + rng.uniform(-60, 60, 3) * (y / height)[..., None]
    image = Image.fromarray(np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(8):
        x0, y0 = int(rng.integers(0, width - 10)), int(rng.integers(0, height - 10))
        box = (x0, y0, x0 + int(rng.integers(10, width // 2)),
               y0 + int(rng.integers(10, height // 2)))
        colour = tuple(int(c) for c in rng.choice([rng.integers(0, 256, 3),
                                                   np.eye(3, dtype=int)[rng.integers(3)] * 230]))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return image


def agreement(masks: list[np.ndarray], reference: list[np.ndarray]) -> float:
    """The fraction of pixels, over all masks, equal to the reference's."""
    same = sum(int((m == r).sum()) for m, r in zip(masks, reference, strict=True))
    return same / sum(r.size for r in reference)


def random_png(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    """A small PNG of smooth random colours (a 3 x 4 pixel image blown up)."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (3, 4, 3), np.uint8)).resize((width, height))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
