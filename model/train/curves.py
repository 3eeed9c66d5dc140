"""Training curves drawn with Pillow (matplotlib is not a dependency): loss and mIoU."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from model.atomic import atomic_file

_PANEL = (560, 320)
_MARGIN = (70, 28, 24, 44)  # left, top, right, bottom
_COLOURS = {"loss": (31, 119, 180), "miou": (214, 39, 40), "pixel_accuracy": (44, 160, 44)}


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        high = low + 1.0
    return [low + (high - low) * i / (count - 1) for i in range(count)]


def _panel(draw: ImageDraw.ImageDraw, origin: tuple[int, int], title: str,
           series: dict[str, list[tuple[float, float]]], y_range: tuple[float, float] | None,
           font: Any) -> None:
    ox, oy = origin
    left, top, right, bottom = _MARGIN
    x0, y0 = ox + left, oy + top
    x1, y1 = ox + _PANEL[0] - right, oy + _PANEL[1] - bottom
    points = [p for values in series.values() for p in values]
    draw.text((x0, oy + 6), title, fill=(0, 0, 0), font=font)
    draw.rectangle((x0, y0, x1, y1), outline=(0, 0, 0))
    if not points:
        draw.text((x0 + 10, y0 + 10), "no data", fill=(120, 120, 120), font=font)
        return
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    xlo, xhi = min(xs), max(xs)
    ylo, yhi = y_range if y_range else (min(ys), max(ys))
    if xhi <= xlo:
        xhi = xlo + 1
    if yhi <= ylo:
        yhi = ylo + 1

    def at(x: float, y: float) -> tuple[float, float]:
        return (x0 + (x - xlo) / (xhi - xlo) * (x1 - x0),
                y1 - (y - ylo) / (yhi - ylo) * (y1 - y0))

    for value in _ticks(ylo, yhi):
        _, y = at(xlo, value)
        draw.line((x0, y, x1, y), fill=(225, 225, 225))
        draw.text((ox + 6, y - 6), f"{value:.3g}", fill=(0, 0, 0), font=font)
    for value in _ticks(xlo, xhi):
        x, _ = at(value, ylo)
        draw.line((x, y1, x, y1 + 4), fill=(0, 0, 0))
        draw.text((x - 12, y1 + 8), f"{value:.0f}", fill=(0, 0, 0), font=font)
    draw.text(((x0 + x1) // 2 - 12, y1 + 24), "step", fill=(0, 0, 0), font=font)
    legend_x = x0 + 8 * len(title) + 16  # on the title row, never over the curves
    for name, values in series.items():
        colour = _COLOURS.get(name, (0, 0, 0))
        if len(values) > 1:
            draw.line([at(x, y) for x, y in values], fill=colour, width=2)
        # Sparse series (mIoU every N steps) get a dot per measurement; dense ones only the last.
        for x, y in values if len(values) <= 30 else values[-1:]:
            cx, cy = at(x, y)
            draw.ellipse((cx - 3, cy - 3, cx + 3, cy + 3), fill=colour)
        label = f"{name} {values[-1][1]:.3f}"
        draw.text((legend_x, oy + 6), label, fill=colour, font=font)
        legend_x += 8 * len(label) + 16


def draw_curves(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Writes a PNG: training loss (left) and val mIoU / pixel accuracy (right) per step."""
    def series(key: str) -> list[tuple[float, float]]:
        return [(float(h["step"]), float(h[key])) for h in history if key in h]

    font = ImageFont.load_default()
    image = Image.new("RGB", (_PANEL[0] * 2, _PANEL[1]), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    _panel(draw, (0, 0), "training loss", {"loss": series("loss")}, None, font)
    quality = {"miou": series("miou"), "pixel_accuracy": series("pixel_accuracy")}
    _panel(draw, (_PANEL[0], 0), "val mIoU / train accuracy",
           {k: v for k, v in quality.items() if v}, (0.0, 1.0), font)
    path = Path(path)
    with atomic_file(path) as file:  # a kill mid-write leaves the previous curves
        image.save(file, format="PNG")
    return path
