"""Options parsing and the probability outputs: class filter, planes, confidence, npz."""

import io

import numpy as np
import pytest
from PIL import Image

from model.inference import probabilities as outputs
from model.inference import tiling
from model.inference.options import InferenceOptions, Tiling, parse_classes, parse_flip

LABELS = ("background", "aeroplane", "bicycle", "bird", "person", "dog")


def test_options_default_to_the_single_pass_and_auto_tiles_only_large_images():
    assert InferenceOptions().single_pass
    assert not InferenceOptions(flip=True).single_pass
    assert not InferenceOptions(scales=(0.5, 1.0)).single_pass
    auto = InferenceOptions(tiling=Tiling.auto)
    assert auto.tiles(1027, 100, 513) and not auto.tiles(1026, 1026, 513)
    assert InferenceOptions(tiling="on").tiles(10, 10, 513)
    with pytest.raises(ValueError, match="'sometimes'"):
        InferenceOptions(tiling="sometimes")


def test_classes_and_flip_are_parsed_and_bad_values_are_named():
    assert parse_classes("person,dog", LABELS) == (4, 5)
    assert parse_classes("5, 4,person", LABELS) == (4, 5)
    assert parse_classes([0, "dog"], LABELS) == (0, 5)
    for bad, named in [("person,cat", "'cat'"), ("6", "'6'"), ("-1", "'-1'"),
                       ("", "at least one")]:
        with pytest.raises(ValueError, match=named):
            parse_classes(bad, LABELS)
    assert parse_flip("true") and not parse_flip("False")
    with pytest.raises(ValueError, match="'maybe'"):
        parse_flip("maybe")


def _random_probabilities(shape, seed=0):
    logits = np.random.default_rng(seed).normal(size=shape) * 3
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    return (exp / exp.sum(-1, keepdims=True)).astype(np.float32)


def test_a_class_filter_sends_other_classes_to_background_and_planes_still_sum_to_one():
    probabilities = _random_probabilities((30, 40, 6))
    mask = outputs.labels_of(probabilities, (4, 5))
    full = probabilities.argmax(-1)
    assert set(np.unique(mask)) <= {0, 4, 5}
    np.testing.assert_array_equal(mask[np.isin(full, (4, 5))], full[np.isin(full, (4, 5))])
    assert (mask[~np.isin(full, (4, 5))] == 0).all()

    planes, ids = outputs.class_planes(probabilities, (5, 4))
    assert ids == (0, 4, 5) and planes.shape == (30, 40, 3)
    np.testing.assert_allclose(planes.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(planes[..., 2], probabilities[..., 5])

    confidence = outputs.confidence(planes, ids, mask)
    on_dog = mask == 5
    np.testing.assert_allclose(confidence[on_dog], probabilities[..., 5][on_dog])
    np.testing.assert_allclose(confidence[mask == 0], planes[..., 0][mask == 0])
    # unfiltered: the confidence is the top probability
    planes, ids = outputs.class_planes(probabilities, None)
    np.testing.assert_allclose(
        outputs.confidence(planes, ids, outputs.labels_of(probabilities, None)),
        probabilities.max(-1))


def test_npz_and_confidence_png_round_trip_and_class_means_are_per_class():
    planes = outputs.quantize(_random_probabilities((8, 9, 3)))
    mask = planes.argmax(-1).astype(np.uint8)
    body = outputs.probabilities_npz(planes, (0, 4, 5), LABELS, mask)
    with np.load(io.BytesIO(body)) as archive:  # no pickles needed
        assert archive["probabilities"].shape == (3, 8, 9)
        np.testing.assert_array_equal(archive["probabilities"], np.moveaxis(planes, -1, 0))
        assert archive["class_ids"].tolist() == [0, 4, 5]
        assert archive["labels"].tolist() == ["background", "person", "dog"]
        np.testing.assert_array_equal(archive["mask"], mask)
    grey = np.arange(72, dtype=np.uint8).reshape(8, 9)
    decoded = Image.open(io.BytesIO(outputs.confidence_png(grey)))
    assert decoded.mode == "L"
    np.testing.assert_array_equal(np.asarray(decoded), grey)
    mask = np.zeros((8, 9), np.uint8)
    mask[:, 5:] = 4
    means = outputs.class_confidences(mask, grey)
    assert means == {0: round(grey[:, :5].mean() / 255, 4), 4: round(grey[:, 5:].mean() / 255, 4)}
    assert outputs.resize_nearest(grey, (18, 16))[::2, ::2].tolist() == grey.tolist()


def test_the_plan_of_a_single_pass_is_the_letterbox_and_tta_plans_count_their_tiles():
    plan = tiling.plan_image(800, 600, 129, tiled=False)
    assert plan.base == (96, 129) and plan.tile_count == 1
    plan = tiling.plan_image(800, 600, 129, tiled=False,
                             scales=tiling.DEEPLAB_EVAL_SCALES, flip=True)
    # scales above 1 no longer fit the input: their passes are tiled (1.25: 120 x 161,
    # 1 x 2 tiles; 1.5: 144 x 194, 2 x 2; 1.75: 168 x 226, 2 x 3), each also mirrored
    assert [len(p.grid) for p in plan.passes] == [1, 1, 1, 1, 1, 1, 2, 2, 4, 4, 6, 6]
    assert plan.model_pixels == 30 * 129 * 129
    plan = tiling.plan_image(800, 600, 129, tiled=True)
    assert plan.base == (600, 800) and plan.tile_count == 9 * 7  # ceil(671/86)+1, ceil(471/86)+1
    plan = tiling.plan_image(6000, 4000, 513, tiled=True)
    assert plan.base == (2049, 3073)
