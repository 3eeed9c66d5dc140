"""Augmentation moves image and label together: a painted pattern survives scale/crop/flip."""

import numpy as np
import tensorflow as tf

from model.nets.backbones import MEAN_RGB
from model.train import augment

COLOURS = {1: (255, 0, 0), 2: (0, 255, 0), 3: (0, 0, 255), 4: (255, 255, 0)}


def painted(height=60, width=80):
    """Four blocks, each painted in its class's colour: the label is readable from the pixels."""
    label = np.zeros((height, width), np.uint8)
    label[: height // 2, : width // 3] = 1
    label[: height // 2, width // 3:] = 2
    label[height // 2:, : width // 2] = 3
    label[height // 2:, width // 2:] = 4
    image = np.zeros((height, width, 3), np.uint8)
    for cls, colour in COLOURS.items():
        image[label == cls] = colour
    return image, label[..., None]


def nearest_class(pixels):
    colours = np.array(list(COLOURS.values()), np.float32)
    distance = ((pixels[..., None, :] - colours) ** 2).sum(-1)
    return np.array(list(COLOURS))[distance.argmin(-1)]


def test_scales_come_from_deeplab_grid():
    grid = {0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0}
    seen = {round(float(augment.random_scale_factor(tf.constant([0, s], tf.int64), 0.5, 2.0,
                                                    0.25)), 4) for s in range(60)}
    assert seen <= grid and len(seen) >= 6


def test_painted_pattern_survives_scale_crop_flip():
    image, label = painted()
    config = augment.AugmentConfig(crop_size=65)
    orientations, padded_seen = set(), False
    for seed in range(16):
        out_image, out_label = augment.augment(tf.constant(image), tf.constant(label),
                                               tf.constant([5, seed], tf.int64), config)
        out_image, out_label = out_image.numpy(), out_label.numpy()[..., 0]
        assert out_image.shape == (65, 65, 3) and out_label.shape == (65, 65)
        objects = out_label != 255
        agree = nearest_class(out_image[objects]) == out_label[objects]
        # Bilinear image vs nearest label may disagree on a boundary row or column only.
        assert agree.mean() > 0.97, (seed, agree.mean())
        ignored = out_label == 255
        if ignored.any():  # padding (the source has no 255): mean pixel, exactly
            padded_seen = True
            np.testing.assert_allclose(out_image[ignored], np.broadcast_to(
                MEAN_RGB, out_image[ignored].shape), atol=1e-3)
        columns = {c: np.nonzero(out_label == c)[1] for c in (1, 2)}
        if all(len(v) for v in columns.values()):
            orientations.add(bool(columns[1].mean() < columns[2].mean()))
    assert orientations == {True, False}  # flipped and unflipped both happened
    assert padded_seen  # some scale fell below the crop


def test_training_batches_are_reproducible():
    image, label = painted()
    examples = tf.data.Dataset.from_tensors({"image": image, "label": label, "name": "a"})
    config = augment.AugmentConfig(crop_size=33)

    def batches(seed):
        return np.stack([b[0].numpy() for b in augment.training_batches(
            examples, config, 2, seed=seed, shuffle_buffer=4).take(2)])

    first, again, other = batches(1), batches(1), batches(2)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
