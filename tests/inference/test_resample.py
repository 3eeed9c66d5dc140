"""``resample.lanczos`` is Pillow's Lanczos resize to the byte, on every path it takes."""

import time

import numpy as np
import pytest
from PIL import Image

from model.inference import resample
from model.inference.preprocessing import letterbox


def noisy(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    """Smooth areas and hard noise: the filter's negative lobes overshoot past 0 and 255
    there, so the clamping is exercised as well as the rounding."""
    rng = np.random.default_rng(seed)
    bands = len(mode)
    coarse = rng.integers(0, 256, (max(1, height // 8), max(1, width // 8), bands), np.uint8)
    smooth = np.asarray(Image.fromarray(coarse.squeeze(-1) if bands == 1 else coarse)
                        .resize((width, height), Image.Resampling.BICUBIC))
    pixels = smooth.reshape(height, width, bands).copy()
    hard = rng.random((height, width)) < 0.2
    pixels[hard] = rng.choice(np.array([0, 255], np.uint8), (int(hard.sum()), bands))
    return Image.fromarray(pixels.squeeze(-1) if bands == 1 else pixels, mode)


def pillow(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(image.resize(size, Image.Resampling.LANCZOS))


def test_random_shapes_up_and_down_equal_pillow() -> None:
    rng = np.random.default_rng(7)
    for case in range(400):
        width, height, out_width, out_height = (int(v) for v in rng.integers(2, 300, 4))
        image = noisy(width, height, case)
        assert np.array_equal(resample.lanczos(image, (out_width, out_height)),
                              pillow(image, (out_width, out_height))), (
            (width, height), (out_width, out_height))


@pytest.mark.parametrize(("size", "out"), [
    ((640, 480), (513, 384)),  # DeepLab's letterbox of a VGA photo
    ((640, 480), (129, 96)),
    ((480, 640), (384, 513)),
    ((300, 200), (513, 342)),  # upscaled
    ((1, 1), (513, 513)),
    ((2, 1), (513, 256)),
    ((1000, 3), (513, 1)),
    ((5, 700), (3, 513)),
    ((1920, 1080), (513, 288)),
    ((4032, 3024), (513, 384)),  # a phone photo: read stripe by stripe
])
def test_the_shapes_the_server_sees_equal_pillow(size: tuple[int, int],
                                                 out: tuple[int, int]) -> None:
    image = noisy(*size, seed=sum(size))
    assert np.array_equal(resample.lanczos(image, out), pillow(image, out))


@pytest.mark.parametrize(("size", "out", "mode"), [
    ((100, 2000), (90, 200), "RGB"),  # Pillow 13 goes vertical-first: Pillow does it
    ((64, 48), (64, 30), "RGB"),  # one axis kept: Pillow skips that pass, so does this
    ((64, 48), (30, 48), "RGB"),
    ((64, 48), (64, 48), "RGB"),
    ((64, 48), (20, 15), "L"),
    ((64, 48), (20, 15), "RGBA"),
])
def test_the_cases_left_to_pillow_are_pillows(size: tuple[int, int], out: tuple[int, int],
                                              mode: str) -> None:
    image = noisy(*size, seed=3, mode=mode)
    assert np.array_equal(resample.lanczos(image, out), pillow(image, out))


def test_it_writes_into_a_canvas_region_and_nowhere_else() -> None:
    image = noisy(640, 480, seed=1)
    canvas, valid = letterbox(image, 513)
    assert valid == (384, 513)
    assert np.array_equal(canvas[:384], pillow(image, (513, 384)))
    assert not canvas[384:].any()


def test_it_runs_on_the_calling_thread_alone() -> None:
    """Every product is small enough that OpenBLAS does not hand it to its thread pool:
    a decode thread must not wake (and spin) BLAS threads on the cores other requests use."""
    image = noisy(1920, 1080, seed=2)
    resample.lanczos(image, (513, 288))
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(5):
        resample.lanczos(image, (513, 288))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert cpu <= wall * 1.15 + 0.01, f"{cpu:.3f} s of CPU in {wall:.3f} s"


@pytest.mark.parametrize(("in_size", "out_size"), [
    (640, 129), (480, 97), (640, 513), (4032, 513), (300, 513), (2, 513), (513, 4000),
    (1000, 3), (97, 96)])
def test_each_stacked_window_holds_its_groups_span_inside_the_input(in_size: int,
                                                                    out_size: int) -> None:
    """A run's strided view reads ``start + k * step`` .. ``+ window`` for its k-th group:
    that must cover the group's taps (else weights are dropped) and stay in the input
    (else it reads memory past the image); the runs cover every output once."""
    axis = resample._axis(in_size, out_size)
    outputs = []
    for run in axis.runs:
        for k, (start, end, low, high, matrix) in enumerate(
                axis.groups[run.first:run.first + run.count]):
            window_start = run.start + k * run.step
            assert 0 <= window_start <= low and high <= window_start + run.window <= in_size
            offset = low - window_start
            assert np.array_equal(run.matrices[k, offset:offset + high - low, :end - start],
                                  matrix)
            assert not run.matrices[k, :offset].any()
            assert not run.matrices[k, offset + high - low:].any()
            outputs.extend(range(start, end))
    assert outputs == list(range(out_size))


def test_the_letterbox_sizes_take_a_few_stacked_products() -> None:
    """The point of the runs: DeepLab's 640 -> 513 row is 65 groups of outputs, which
    would be 65 numpy calls (each one a GIL hand-off) per stripe of input rows."""
    assert len(resample._axis(640, 513).runs) <= 4
    assert len(resample._axis(640, 129).runs) <= 4
