"""The segmentation network: backbone + head, and the inference graph around it.

Scope names are part of the checkpoint and serving contracts, so they are constants
here.  The head follows DeepLab's names (``logits/semantic``, ``aspp0``...), so that
DeepLab checkpoints restore as they are; slim-named checkpoints are mapped onto them
by ``model.checkpoints``.
"""

from typing import Any

import tensorflow as tf

from model.config import ModelConfig
from model.nets.backbones import MEAN_RGB, Backbone, get_backbone
from model.nets.slim_compat import slim

LOGITS_SCOPE = "logits"
LOGITS_BRANCH = "semantic"
ASPP_DEPTH = 256
ASPP_SCOPES = ("image_pooling", "aspp0", "aspp1", "aspp2", "aspp3", "concat_projection")
# DeepLabv3's ASPP rates at output stride 16; they double at 8 (and halve at 32).
_ASPP_RATES_OS16 = (6, 12, 18)

COMPUTE_DTYPES = {"fp32": tf.float32, "fp16": tf.float16, "bf16": tf.bfloat16}


def head_scopes(config: ModelConfig) -> tuple[str, ...]:
    """Scopes of the layers that are not in an ImageNet checkpoint (skipped on restore)."""
    return (LOGITS_SCOPE, *(ASPP_SCOPES if config.head == "aspp" else ()))


def aspp_rates(output_stride: int) -> tuple[int, ...]:
    return tuple(rate * 16 // output_stride for rate in _ASPP_RATES_OS16)


def _aspp(features: Any, output_stride: int, is_training: bool) -> Any:
    """DeepLabv3 ASPP: image pooling, 1x1 and three atrous 3x3 branches, projection."""
    size = tf.shape(features)[1:3]
    pooled = tf.reduce_mean(features, axis=[1, 2], keepdims=True)
    pooled = slim.conv2d(pooled, ASPP_DEPTH, 1, scope="image_pooling")
    branches = [
        tf.cast(tf.compat.v1.image.resize_bilinear(pooled, size, align_corners=True),
                pooled.dtype),
        slim.conv2d(features, ASPP_DEPTH, 1, scope="aspp0"),
    ]
    for i, rate in enumerate(aspp_rates(output_stride), start=1):
        branches.append(slim.conv2d(features, ASPP_DEPTH, 3, rate=rate, scope=f"aspp{i}"))
    net = slim.conv2d(tf.concat(branches, 3), ASPP_DEPTH, 1, scope="concat_projection")
    return slim.dropout(net, keep_prob=0.9, is_training=is_training,
                        scope="concat_projection_dropout")


def _fp32_variables(getter: Any, name: str, *args: Any, dtype: Any = None, **kwargs: Any) -> Any:
    """Keeps every variable in float32 (as in the checkpoints) and casts it on read."""
    variable = getter(name, *args, dtype=tf.float32, **kwargs)
    if dtype is not None and dtype != tf.float32 and variable.dtype.base_dtype == tf.float32:
        return tf.cast(variable, dtype)
    return variable


def segmentation_logits(
    images: Any,
    config: ModelConfig,
    *,
    is_training: bool,
    backbone: Backbone | None = None,
    nominal: bool = False,
    regularize: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """Preprocessing, backbone and head: RGB pixels to logits at feature resolution.

    Args:
        images: float32 Tensor [N, H, W, 3] of RGB values in [0, 255].
        config: the model configuration.
        is_training: batch-norm and dropout mode, set once for the whole network.
        backbone: overrides the registry record (tests use tiny block tables).
        nominal: build without atrous units, at the backbone's nominal stride (the
            reference the atrous networks are checked against).
        regularize: attach slim's L2 weight regularizers (from the arg_scope); the trainer
            computes weight decay itself and turns them off (they cannot sit on the cast
            variables of a half-precision network under the TF2 variable shim).

    Returns:
        logits: Tensor [N, (H-1)/OS+1, (W-1)/OS+1, num_classes], float32.
        end_points: backbone end points plus ``features`` and ``logits``.
    """
    spec = backbone or get_backbone(config.backbone)
    stride = None if nominal else config.output_stride
    dtype = COMPUTE_DTYPES[config.precision]  # variables stay float32
    inputs = tf.cast(spec.preprocess(images), dtype)
    with tf.compat.v1.variable_scope(
        tf.compat.v1.get_variable_scope(),
        custom_getter=None if dtype == tf.float32 else _fp32_variables,
    ), slim.arg_scope(spec.arg_scope(weight_decay=config.weight_decay,
                                     batch_norm_decay=config.batch_norm_decay,
                                     batch_norm_epsilon=config.batch_norm_epsilon)), \
            slim.arg_scope([slim.batch_norm], is_training=is_training,
                           fused=None if dtype == tf.float32 else False), \
            slim.arg_scope([slim.conv2d],
                           **({} if regularize else {"weights_regularizer": None})):
        features, end_points = spec.build(inputs, output_stride=stride,
                                          is_training=is_training)
        if config.head == "aspp":
            features = _aspp(features, stride or spec.nominal_stride, is_training)
        with tf.compat.v1.variable_scope(LOGITS_SCOPE):
            logits = slim.conv2d(
                features, config.num_classes, 1, activation_fn=None, normalizer_fn=None,
                weights_initializer=tf.compat.v1.truncated_normal_initializer(stddev=0.01),
                scope=LOGITS_BRANCH)
    logits = tf.cast(logits, tf.float32)
    end_points = dict(end_points, features=features, logits=logits)
    return logits, end_points


def pad_with_mean(images: Any, sizes: Any) -> Any:
    """Replaces pixels outside each image's valid top-left region by DeepLab's mean pixel.

    Args:
        images: float32 [N, S, S, 3] letterboxed images.
        sizes: int32 [N, 2] valid (height, width) of each image.

    Returns:
        float32 [N, S, S, 3], what DeepLab's ``pad_to_bounding_box(..., mean_pixel)`` gives.
    """
    shape = tf.shape(images)
    rows = tf.range(shape[1])[None, :, None] < sizes[:, 0, None, None]
    cols = tf.range(shape[2])[None, None, :] < sizes[:, 1, None, None]
    valid = tf.logical_and(rows, cols)[..., None]
    return tf.where(valid, images, tf.constant(MEAN_RGB, tf.float32))


def upsampled_logits(images: Any, sizes: Any, config: ModelConfig, *,
                     regularize: bool = True) -> Any:
    """DeepLab inference on letterboxed batches, up to the logits at input resolution.

    Args:
        images: uint8 [N, S, S, 3] (S = ``config.input_size``), image at the top left.
        sizes: int32 [N, 2] valid (height, width) per image.
        config: the model configuration (``config.precision`` is the compute dtype).
        regularize: as in ``segmentation_logits``.

    Returns:
        float32 [N, S, S, num_classes]: logits upsampled bilinearly (corners aligned) to S x S.
    """
    padded = pad_with_mean(tf.cast(images, tf.float32), sizes)
    logits, _ = segmentation_logits(padded, config, is_training=False,
                                    regularize=regularize)
    size = tf.shape(images)[1:3]
    return tf.compat.v1.image.resize_bilinear(logits, size, align_corners=True)


def labels_from_logits(logits: Any) -> Any:
    """float [N, S, S, C] logits -> uint8 [N, S, S] class ids (the argmax)."""
    return tf.cast(tf.argmax(logits, axis=3, output_type=tf.int32), tf.uint8)


def probabilities_from_logits(logits: Any) -> Any:
    """float [N, S, S, C] logits -> float32 [N, S, S, C] class probabilities (softmax)."""
    return tf.nn.softmax(tf.cast(logits, tf.float32), axis=3)


def predict_labels(images: Any, sizes: Any, config: ModelConfig, *,
                   regularize: bool = True) -> Any:
    """DeepLab inference on letterboxed batches, argmax inside the graph.

    Args:
        images, sizes, config, regularize: as in ``upsampled_logits``.

    Returns:
        uint8 [N, S, S] class ids: the argmax of ``upsampled_logits``.
    """
    return labels_from_logits(upsampled_logits(images, sizes, config, regularize=regularize))
