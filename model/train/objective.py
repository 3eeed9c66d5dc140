"""DeepLab's training recipe as functions: the loss, the learning rate, the restore rule.

After ``utils/train_utils.py`` (``add_softmax_cross_entropy_loss_for_each_scale``,
``get_model_learning_rate``, ``get_model_init_fn``), without its flags.
"""

import logging
from typing import Any

import tensorflow as tf

from model import checkpoints
from model.config import ModelConfig
from model.train.data import IGNORE_LABEL

log = logging.getLogger(__name__)

BASE_LEARNING_RATE = 0.007
POLY_POWER = 0.9
MOMENTUM = 0.9


def upsample_logits(logits: Any, size: int) -> Any:
    """float32 [N, h, w, C] -> [N, size, size, C], bilinear with corners aligned (DeepLab)."""
    return tf.compat.v1.image.resize_bilinear(logits, [size, size], align_corners=True)


def cross_entropy_sum(logits: Any, labels: Any, num_classes: int) -> tuple[Any, Any]:
    """Softmax cross-entropy summed over the pixels that are not ``IGNORE_LABEL``.

    Args:
        logits: float32 [N, H, W, C] at label resolution.
        labels: uint8/int [N, H, W, 1] class ids, 255 = ignore.

    Returns:
        (sum of the per-pixel losses, number of counted pixels), both float32 scalars:
        the mean is their ratio; keeping them apart lets replicas of a distributed step
        divide by the global count, so N replicas give exactly one device's loss.
    """
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    logits = tf.reshape(logits, [-1, num_classes])
    weights = tf.cast(tf.not_equal(labels, IGNORE_LABEL), tf.float32)
    safe = tf.where(labels == IGNORE_LABEL, tf.zeros_like(labels), labels)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=logits)
    return tf.reduce_sum(losses * weights), tf.reduce_sum(weights)


def pixel_counts(logits: Any, labels: Any) -> tuple[Any, Any]:
    """(correctly classified, counted) pixels, ignore label excluded: float32 scalars."""
    labels = tf.cast(labels[..., 0], tf.int32)
    predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
    weights = tf.cast(tf.not_equal(labels, IGNORE_LABEL), tf.float32)
    return tf.reduce_sum(tf.cast(predictions == labels, tf.float32) * weights), tf.reduce_sum(
        weights)


def is_regularized(name: str) -> bool:
    """Slim's arg_scope puts L2 on convolution weights only (not biases or batch norm)."""
    return name.split(":")[0].endswith("/weights")


def weight_decay_loss(variables: Any, weight_decay: float) -> Any:
    """``weight_decay * sum(l2_loss(w))`` over convolution weights, as slim's regularizer."""
    terms = [tf.nn.l2_loss(v) for v in variables if is_regularized(v.name)]
    if not terms or weight_decay == 0:
        return tf.constant(0.0)
    return weight_decay * tf.add_n(terms)


def poly_learning_rate(step: int, total_steps: int, base: float = BASE_LEARNING_RATE,
                       power: float = POLY_POWER, end: float = 0.0) -> float:
    """DeepLab's poly schedule: ``(base - end) * (1 - step/total)^power + end``."""
    fraction = min(step, total_steps) / max(total_steps, 1)
    return (base - end) * (1.0 - fraction) ** power + end


def init_from_checkpoint(variables: dict[str, Any], checkpoint: str,
                         config: ModelConfig) -> checkpoints.RestoreReport:
    """The restore rule: every variable the checkpoint holds, the head only if it fits.

    An ImageNet classifier restores all but the head scopes
    (``model.network.head_scopes``), which keep their fresh initialisation; a
    segmentation checkpoint of the same class count restores everything.  The name
    matching is ``model.checkpoints.plan_restore``, the one export and serving use.

    Args:
        variables: graph name (no ``:0``) -> variable (plain or mirrored).
        checkpoint: a checkpoint path, prefix or directory.
        config: the network configuration.
    """
    path = checkpoints.resolve_checkpoint(checkpoint)
    model_shapes = {name: v.shape.as_list() for name, v in variables.items()}
    mapping, layout, head_restored = checkpoints.plan_restore(
        config, model_shapes, checkpoints.read_variable_shapes(path), path)
    reader = tf.train.load_checkpoint(path)
    for name, stored in mapping.items():
        variables[name].assign(reader.get_tensor(stored))
    log.info("initialised %d variables from %s (%s layout, head %s)", len(mapping), path,
             layout, "restored" if head_restored else "fresh")
    return checkpoints.RestoreReport(path, layout, len(mapping), head_restored)
