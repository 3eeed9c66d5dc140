"""Cost of tiling and of test-time augmentation relative to DeepLab's single pass.

One SavedModel, one image size, in-process (no HTTP): each mode runs the whole offline
pipeline on one decoded RGB image -- cutting, model calls (``--batch-size`` inputs at a
time), blending, averaging, argmax and the mask at full size -- and is timed over
``--repeats`` runs after one untimed warm-up run.  Modes are interleaved round by round,
so drifting machine load hits all of them alike; report ratios from one run.

* ``single``: today's default, the labels signature on one letterboxed input;
* ``single+probabilities``: the same pass through the probabilities signature (what
  ``format=json`` confidences and the probability formats cost);
* ``tiling=on``: native-resolution tiles, overlap >= 1/3;
* ``scales=DeepLab+flip``: 0.5..1.75 and flip on the letterboxed size;
* ``tiling=on+flip``.

Usage::

    python benchmarks/tiling_bench.py                                  # ResNet-101, 513
    python benchmarks/tiling_bench.py --backbone cifar_resnet_20 --repeats 5
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    name = fields.get("Model name", "unknown").strip()
    cpus = fields.get("CPU(s)", "?").strip()
    flags = fields.get("Flags", "")
    simd = "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "no AVX2")
    return f"{name}, {cpus} vCPUs, {simd}"


def photo(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (max(1, height // 16), max(1, width // 16), 3), np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet_v1_101")
    parser.add_argument("--output-stride", type=int, default=16)
    parser.add_argument("--input-size", type=int, default=513)
    parser.add_argument("--size", default="1026x684", help="image WxH (default: 2x the input)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "atrous-bench-models")
    args = parser.parse_args()

    from model.config import ModelConfig
    from model.export import UntrainedModelWarning, cached_export
    from model.inference import pipeline
    from model.inference.options import InferenceOptions, Tiling
    from model.inference.runtimes import load_runtime
    from model.inference.tiling import DEEPLAB_EVAL_SCALES

    config = ModelConfig(backbone=args.backbone, output_stride=args.output_stride,
                         input_size=args.input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedModelWarning)
        path = cached_export(config, args.cache_dir)
    runner = load_runtime(path)
    width, height = (int(v) for v in args.size.split("x"))
    image = photo(width, height)
    megapixels = width * height / 1e6
    size = args.input_size

    modes = {
        "single": None,
        "single+probabilities": InferenceOptions(),
        "tiling=on": InferenceOptions(tiling=Tiling.on),
        "scales=DeepLab+flip": InferenceOptions(scales=DEEPLAB_EVAL_SCALES, flip=True),
        "tiling=on+flip": InferenceOptions(tiling=Tiling.on, flip=True),
    }

    def run(options: InferenceOptions | None) -> int:
        if options is None:
            pipeline.segment_images(runner, [image])
            return 1
        group = pipeline.prepare_group(image, size, options)
        probabilities = pipeline.run_group(runner, group, batch_size=args.batch_size)
        pipeline.resolve_group(probabilities, group, options)
        return group.plan.tile_count

    tiles = {name: run(options) for name, options in modes.items()}  # warm-up, untimed
    times: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(args.repeats):
        for name, options in modes.items():
            start = time.perf_counter()
            run(options)
            times[name].append(time.perf_counter() - start)

    load = os.getloadavg()[0]
    print(f"\n{args.backbone} OS{args.output_stride}, input {size}, image {width}x{height} "
          f"({megapixels:.2f} MP), batch {args.batch_size}, {args.repeats} timed runs; "
          f"{cpu_name()}; load average {load:.1f} at the end\n")
    print("| mode | model inputs | s/image (median) | images/s | s per MP | × single |")
    print("|---|---|---|---|---|---|")
    base = statistics.median(times["single"])
    for name in modes:
        median = statistics.median(times[name])
        print(f"| {name} | {tiles[name]} | {median:.3f} | {1 / median:.3f} | "
              f"{median / megapixels:.3f} | {median / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
