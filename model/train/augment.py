"""DeepLab's training augmentation as small ``tf.data`` functions on (image, label) pairs.

decode -> ``random_scale`` -> ``pad_to_crop`` -> ``random_crop`` -> ``random_flip``, each
moving the image and its label together (DeepLab's ``input_preprocess.py``): the image is
resized bilinearly and padded with the mean pixel, the label resized with nearest
neighbour and padded with 255, so padding is ignored by the loss.  Randomness is
stateless, drawn from a per-example seed: every worker of a distributed run computes
the same global batch, and a test can replay an example exactly.

Shapes: image float32 [H, W, 3] (RGB in [0, 255]), label uint8 [H, W, 1].
"""

import dataclasses
from typing import Any

import tensorflow as tf

from model.nets.backbones import MEAN_RGB
from model.train.data import IGNORE_LABEL


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """DeepLab's defaults: scales 0.5-2.0 in steps of 0.25, flips on."""

    crop_size: int = 513
    min_scale: float = 0.5
    max_scale: float = 2.0
    scale_step: float = 0.25
    flip: bool = True

    def __post_init__(self) -> None:
        if self.crop_size < 33 or (self.crop_size - 1) % 32:
            raise ValueError(f"crop_size must be 32k+1 and at least 33 (e.g. 321, 513), "
                             f"got {self.crop_size}")
        if not 0 < self.min_scale <= self.max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {self.min_scale}, "
                             f"{self.max_scale}")
        if self.scale_step < 0:
            raise ValueError(f"scale_step must be >= 0, got {self.scale_step}")


def random_scale_factor(seed: Any, min_scale: float, max_scale: float, step: float) -> Any:
    """A scale in [min, max]: uniform when ``step`` is 0, else one of min, min+step, ..., max."""
    if min_scale == max_scale:
        return tf.constant(min_scale, tf.float32)
    if step == 0:
        return tf.random.stateless_uniform([], seed, min_scale, max_scale)
    count = int(round((max_scale - min_scale) / step)) + 1
    choices = tf.linspace(min_scale, max_scale, count)
    index = tf.random.stateless_uniform([], seed, 0, count, dtype=tf.int32)
    return tf.gather(choices, index)


def scale(image: Any, label: Any, factor: Any) -> tuple[Any, Any]:
    """Resizes both by ``factor``: bilinear image, nearest-neighbour label (corners aligned)."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    size = tf.cast(shape * factor, tf.int32)
    image = tf.compat.v1.image.resize_bilinear(image[None], size, align_corners=True)[0]
    label = tf.compat.v1.image.resize_nearest_neighbor(label[None], size, align_corners=True)[0]
    return image, label


def random_scale(image: Any, label: Any, seed: Any, config: AugmentConfig) -> tuple[Any, Any]:
    factor = random_scale_factor(seed, config.min_scale, config.max_scale, config.scale_step)
    return scale(image, label, factor)


def pad_to_crop(image: Any, label: Any, crop_size: int) -> tuple[Any, Any]:
    """Pads bottom/right to at least ``crop_size``: mean pixel for the image, 255 for the label."""
    shape = tf.shape(image)
    height = tf.maximum(shape[0], crop_size)
    width = tf.maximum(shape[1], crop_size)
    paddings = [[0, height - shape[0]], [0, width - shape[1]], [0, 0]]
    mean = tf.constant(MEAN_RGB, tf.float32)
    # Pad the mean-subtracted image with zeros: the padded pixels become the mean exactly.
    image = tf.pad(image - mean, paddings) + mean
    label = tf.pad(label, paddings, constant_values=IGNORE_LABEL)
    return image, label


def random_crop(image: Any, label: Any, crop_size: int, seed: Any) -> tuple[Any, Any]:
    """The same ``crop_size`` square window of both (they are at least that big)."""
    shape = tf.shape(image)
    top = tf.random.stateless_uniform([], seed, 0, shape[0] - crop_size + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([], seed + 1, 0, shape[1] - crop_size + 1,
                                       dtype=tf.int32)
    image = image[top:top + crop_size, left:left + crop_size]
    label = label[top:top + crop_size, left:left + crop_size]
    return tf.ensure_shape(image, [crop_size, crop_size, 3]), tf.ensure_shape(
        label, [crop_size, crop_size, 1])


def random_flip(image: Any, label: Any, seed: Any) -> tuple[Any, Any]:
    """Mirrors both left-right with probability 1/2."""
    flip = tf.random.stateless_uniform([], seed) < 0.5
    return (tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image),
            tf.cond(flip, lambda: tf.reverse(label, [1]), lambda: label))


def augment(image: Any, label: Any, seed: Any, config: AugmentConfig) -> tuple[Any, Any]:
    """The whole chain for one example.

    Args:
        image: uint8 or float32 [H, W, 3].
        label: uint8 [H, W, 1].
        seed: int32/int64 [2], the example's stateless seed.
        config: scales, crop and flip.

    Returns:
        float32 [crop, crop, 3] and uint8 [crop, crop, 1].
    """
    seed = tf.cast(seed, tf.int64)
    image = tf.cast(image, tf.float32)
    image, label = random_scale(image, label, seed, config)
    image, label = pad_to_crop(image, label, config.crop_size)
    image, label = random_crop(image, label, config.crop_size, seed + [0, 7])
    if config.flip:
        image, label = random_flip(image, label, seed + [0, 13])
    return image, label


def training_batches(examples: Any, config: AugmentConfig, batch_size: int, *,
                     seed: int = 0, shuffle_buffer: int = 1000) -> Any:
    """Endless shuffled, augmented batches ``(images [B, C, C, 3], labels [B, C, C, 1])``.

    The order and every random choice depend on ``seed`` only, so every worker of a
    distributed run builds the same global batches.
    """
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF

    def prepare(index: Any, example: dict[str, Any]) -> tuple[Any, Any]:
        return augment(example["image"], example["label"],
                       tf.stack([tf.constant(seed, tf.int64), index]), config)

    return (examples.repeat().shuffle(shuffle_buffer, seed=seed).enumerate()
            .map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size, drop_remainder=True)
            .prefetch(tf.data.AUTOTUNE)
            .with_options(options))
