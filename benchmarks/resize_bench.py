"""DeepLab's input resize: Pillow's Lanczos against ``model.inference.resample.lanczos``.

For each photo size, the letterbox's resize (longer side to the model's input) is timed
both ways on one thread, interleaved, and the two results are compared byte for byte
(the run stops at the first difference).  Photos are smooth colour fields with 20 % hard
black/white pixels, so the filter's overshoot is clamped as in real edges.

Usage::

    python benchmarks/resize_bench.py                        # the default sizes, input 513
    python benchmarks/resize_bench.py --input-size 129 --json out.json
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.host_ceiling import machine  # noqa: E402
from model.inference import resample  # noqa: E402
from model.inference.preprocessing import resized_shape  # noqa: E402

SIZES = ["100x80", "300x200", "640x480", "480x640", "1280x960", "1920x1080", "4032x3024"]


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(1, height // 8), max(1, width // 8), 3), np.uint8)
    pixels = np.asarray(Image.fromarray(coarse).resize((width, height),
                                                       Image.Resampling.BICUBIC)).copy()
    hard = rng.random((height, width)) < 0.2
    pixels[hard] = rng.choice(np.array([0, 255], np.uint8), (int(hard.sum()), 3))
    return Image.fromarray(pixels)


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=SIZES, help="WIDTHxHEIGHT photos")
    parser.add_argument("--input-size", type=int, default=513)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    print(json.dumps(machine()))
    for text in args.sizes:
        width, height = (int(v) for v in text.split("x"))
        image = photo(width, height)
        out_height, out_width = resized_shape(width, height, args.input_size)
        size = (out_width, out_height)

        def pillow(image: Image.Image = image, size: tuple[int, int] = size) -> np.ndarray:
            return np.asarray(image.resize(size, Image.Resampling.LANCZOS))

        def ours(image: Image.Image = image, size: tuple[int, int] = size) -> np.ndarray:
            return resample.lanczos(image, size)

        if not np.array_equal(pillow(), ours()):
            raise SystemExit(f"{text} -> {size}: not Pillow's bytes")
        pillow_ms, ours_ms = [], []
        for _ in range(3):  # interleaved, so that a drift of the machine hits both
            pillow_ms += timed(pillow, args.repeats // 3 or 1)
            ours_ms += timed(ours, args.repeats // 3 or 1)
        row = {"photo": text, "resized": f"{out_width}x{out_height}",
               "pillow_ms": round(statistics.median(pillow_ms), 2),
               "resample_ms": round(statistics.median(ours_ms), 2), "same_bytes": True}
        row["speedup"] = round(row["pillow_ms"] / row["resample_ms"], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps({**machine(), "input_size": args.input_size,
                                         "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
