"""The tiling and test-time-augmentation core (numpy only): placement, window, blending."""

import numpy as np
import pytest

from model.inference import tiling


@pytest.mark.parametrize("length", [1, 64, 65, 66, 100, 129, 130, 513, 754, 3000])
@pytest.mark.parametrize("tile", [65, 129, 513])
def test_tiles_cover_the_length_with_a_third_overlap_and_stay_inside(length, tile):
    starts = tiling.tile_starts(length, tile)
    assert starts[0] == 0
    if length <= tile:
        assert starts == [0]
        return
    assert starts[-1] + tile == length  # flush with the far edge, never beyond it
    steps = np.diff(starts)
    assert (steps > 0).all()
    assert (tile - steps >= tile / 3).all(), (starts, tile)  # overlap >= a third
    assert steps.max() - steps.min() <= 1  # evenly spread
    # and no fewer tiles would do: one tile less would need a step beyond the overlap rule
    if len(starts) > 2:
        assert (length - tile) / (len(starts) - 2) > tile - np.ceil(tile / 3)


def test_the_grid_covers_every_pixel_and_small_images_are_one_letterboxed_tile():
    grid = tiling.plan_tiles(300, 200, 129)
    covered = np.zeros((300, 200), int)
    for top, left, rows, cols in grid.boxes:
        assert rows == cols == 129
        covered[top:top + rows, left:left + cols] += 1
    assert covered.min() >= 1
    small = tiling.plan_tiles(50, 300, 129)
    assert {(top, rows) for top, _, rows, _ in small.boxes} == {(0, 50)}


def test_cut_tiles_crops_the_image_and_reports_valid_sizes():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (100, 150, 3), dtype=np.uint8)
    grid = tiling.plan_tiles(100, 150, 65)
    canvases, sizes = tiling.cut_tiles(image, grid)
    assert canvases.shape == (len(grid), 65, 65, 3) and sizes.dtype == np.int32
    for canvas, (rows, cols), (top, left, _, _) in zip(canvases, sizes, grid.boxes, strict=True):
        np.testing.assert_array_equal(canvas[:rows, :cols],
                                      image[top:top + rows, left:left + cols])
    small = np.full((40, 30, 3), 7, np.uint8)
    canvases, sizes = tiling.cut_tiles(small, tiling.plan_tiles(40, 30, 65))
    assert sizes.tolist() == [[40, 30]] and canvases[0, 40:].max() == 0


def test_working_shape_downscales_only_beyond_tile_max_side():
    assert tiling.working_shape(2000, 3000, 2049) == (2000, 3000)
    assert tiling.working_shape(4000, 6000, 2049) == (2049, 3073)
    assert tiling.working_shape(6000, 4000, 1000) == (1500, 1000)


def test_the_window_is_smooth_positive_and_peaks_in_the_middle():
    window = tiling.blend_window(129)
    assert window.shape == (129, 129) and window.min() > 0
    assert window[64, 64] == window.max() and window[0, 0] == window.min()
    np.testing.assert_allclose(window, window.T)
    assert np.abs(np.diff(window, axis=1)).max() < 0.05  # no jumps


def test_blending_constant_tiles_returns_the_constant_and_weights_pixels_by_the_window():
    grid = tiling.plan_tiles(200, 300, 65)
    probabilities = np.zeros((len(grid), 65, 65, 3), np.float32)
    probabilities[..., 1] = 0.25
    probabilities[..., 2] = 0.75
    blended = tiling.blend(grid, probabilities)
    np.testing.assert_allclose(blended[..., 1], 0.25, atol=1e-6)
    np.testing.assert_allclose(blended[..., 2], 0.75, atol=1e-6)


def test_tiles_that_disagree_fade_into_each_other_without_a_seam():
    # Each tile says "class 0" or "class 1" with certainty, alternating: a hard seam if
    # tiles were pasted, a smooth ramp when they are blended with the window.
    grid = tiling.plan_tiles(65, 400, 65)
    probabilities = np.zeros((len(grid), 65, 65, 2), np.float32)
    for index in range(len(grid)):
        probabilities[index, ..., index % 2] = 1.0
    blended = tiling.blend(grid, probabilities)
    np.testing.assert_allclose(blended.sum(-1), 1.0, atol=1e-5)
    row = blended[32, :, 1]
    assert np.abs(np.diff(row)).max() < 0.1, np.abs(np.diff(row)).max()
    # ... and in each tile's own middle that tile dominates
    for index, (_, left, _, cols) in enumerate(grid.boxes):
        assert abs(row[left + cols // 2] - (index % 2)) < 0.2


def test_blender_refuses_to_finish_with_missing_tiles():
    grid = tiling.plan_tiles(100, 100, 65)
    blender = tiling.Blender(grid, 2)
    blender.add(0, np.ones((65, 65, 2), np.float32))
    with pytest.raises(ValueError, match="1 of 4 tiles"):
        blender.result()


def test_resize_keeps_distributions_and_flip_is_undone_in_the_average():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(20, 30, 4)).astype(np.float32)
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    resized = tiling.resize_probabilities(probabilities, (47, 13))
    assert resized.shape == (47, 13, 4)
    np.testing.assert_allclose(resized.sum(-1), 1.0, atol=1e-5)
    mirrored = probabilities[:, ::-1]
    merged = tiling.average_probabilities([(probabilities, False), (mirrored, True)], (20, 30))
    np.testing.assert_allclose(merged, probabilities, atol=1e-6)
    half = tiling.resize_probabilities(probabilities, (10, 15))
    merged = tiling.average_probabilities([(probabilities, False), (half, False)], (20, 30))
    np.testing.assert_allclose(merged,
                               (probabilities + tiling.resize_probabilities(half, (20, 30))) / 2,
                               atol=1e-6)


def test_scales_are_parsed_and_each_bad_value_is_named():
    assert tiling.parse_scales("0.5, 0.75,1,1.25,1.5,1.75") == tiling.DEEPLAB_EVAL_SCALES
    assert tiling.parse_scales([1.0]) == (1.0,)
    for text, named in [("", "at least one"), ("1,abc", "'abc'"), ("3", "'3'"),
                        ("1,1.0", "repeated"), ("nan", "'nan'"), ("0.1", "outside"),
                        (",".join(["1"] * 9), "at most 8")]:
        with pytest.raises(ValueError, match=named):
            tiling.parse_scales(text)
    assert tiling.scaled_shape(200, 300, 0.5) == (100, 150)


@pytest.mark.parametrize(("size", "tiled", "scales", "flip", "classes", "order"), [
    ((300, 200), True, (1.0,), False, None, "in"),  # one pass, banded
    ((300, 200), True, (1.0,), False, (0, 2), "reversed"),  # results out of order
    ((150, 90), True, (0.75, 1.0, 1.5), True, None, "shuffled"),  # several passes
    ((90, 70), False, (1.0,), False, None, "in"),  # one letterboxed canvas
    ((90, 70), False, (0.5,), False, (3,), "in"),  # one pass, resized to the base
])
def test_streaming_resolve_equals_the_full_stack_merge(size, tiled, scales, flip, classes,
                                                        order):
    """Folding results in as they arrive (bounded memory) gives exactly what stacking every
    tile's probabilities, merging and resolving them at once gave."""
    from model.inference import augmented

    plan = tiling.plan_image(*size, 33, tiled=tiled, scales=scales, flip=flip)
    rng = np.random.default_rng(len(plan.passes) * 7 + size[0])
    logits = rng.normal(size=(plan.tile_count, 33, 33, 5)).astype(np.float32)
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    expected = augmented.resolve(tiling.merge_image(plan, probabilities), size, classes,
                                 with_planes=True)
    indices = list(range(plan.tile_count))
    if order == "reversed":
        indices.reverse()
    elif order == "shuffled":
        rng.shuffle(indices)
    resolver = augmented.StreamingResolve(plan, classes, with_planes=True)
    for index in indices:
        resolver.add(index, probabilities[index])
    got = resolver.result()
    assert plan.tile_count > 1 or not tiled
    np.testing.assert_array_equal(got.mask, expected.mask)
    np.testing.assert_array_equal(got.confidence, expected.confidence)
    np.testing.assert_array_equal(got.planes, expected.planes)
    assert got.class_ids == expected.class_ids


def test_a_single_pass_holds_one_tile_row_of_accumulator_not_the_image():
    """The bound the docs state: a tiled single pass keeps min(S, rows) rows."""
    plan = tiling.plan_image(400, 300, 33, tiled=True)
    bands: list[tuple[int, int]] = []
    merge = tiling.StreamingMerge(plan, lambda top, rows: bands.append((top, len(rows))))
    for index in range(plan.tile_count):
        merge.add(index, np.full((33, 33, 3), 1 / 3, np.float32))
    assert merge.done and bands[0][0] == 0
    assert [top for top, _ in bands[1:]] == [t + n for t, n in bands[:-1]]  # consecutive
    assert sum(n for _, n in bands) == 300 and max(n for _, n in bands) <= 33
    with pytest.raises(ValueError, match="already added"):
        merge.add(0, np.zeros((33, 33, 3), np.float32))


@pytest.mark.parametrize("scales", [(1.0,), (0.5, 1.0)])
def test_cut_image_cuts_the_image_itself_at_scale_one_and_pillows_resize_at_others(scales):
    """At scale 1 a tiled pass reads the decoded pixels (no resize), flipped or not; another
    scale reads Pillow's Lanczos resize."""
    from PIL import Image

    rng = np.random.default_rng(11)
    image = Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8))
    plan = tiling.plan_image(90, 70, 33, tiled=True, scales=scales, flip=True)
    canvases, sizes = tiling.cut_image(image, plan)
    expected_canvases, expected_sizes = [], []
    for step in plan.passes:
        shape = (step.grid.height, step.grid.width)
        source = (np.asarray(image) if shape == (70, 90) else
                  np.asarray(image.resize(shape[::-1], Image.Resampling.LANCZOS)))
        tiles, valid = tiling.cut_tiles(source[:, ::-1] if step.flipped else source, step.grid)
        expected_canvases.append(tiles)
        expected_sizes.append(valid)
    assert any(p.grid.height == 70 for p in plan.passes)
    np.testing.assert_array_equal(canvases, np.concatenate(expected_canvases))
    np.testing.assert_array_equal(sizes, np.concatenate(expected_sizes))
