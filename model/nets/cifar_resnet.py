"""A small CIFAR-style ResNet (after the TF official model) for tests and CPU demos.

Three stages of pre-activation units with 16/32/64 filters (or bottlenecks with
64/128/256 outputs) and strides 1/2/2; the first unit activates before the residual
split, so its shortcut also sees the normalised input.  A unit's stride sits in its
last 3x3 convolution (the official model strides the first), which keeps atrous
units exact.  A stride-4 stem (3x3 conv,
3x3 max-pool) puts the nominal stride at 16, and ``stack_blocks_dense`` makes the
units atrous for output stride 8, exactly as in the slim ResNets.
"""

from typing import Any

import tensorflow as tf

from model.nets.slim_compat import resnet_utils, slim


@slim.add_arg_scope
def unit(inputs: Any, depth: int, depth_bottleneck: int, stride: int, rate: int = 1,
         bottleneck: bool = False, activate_before_residual: bool = False,
         outputs_collections: Any = None, scope: str | None = None) -> Any:
    """One pre-activation residual unit: [N, H, W, C] -> [N, H/stride, W/stride, depth]."""
    with tf.compat.v1.variable_scope(scope, "cifar_unit", [inputs]) as sc:
        depth_in = slim.utils.last_dimension(inputs.get_shape(), min_rank=4)
        preact = slim.batch_norm(inputs, activation_fn=tf.nn.relu, scope="preact")
        shortcut_input = preact if activate_before_residual else inputs
        if depth == depth_in:
            shortcut = resnet_utils.subsample(shortcut_input, stride, "shortcut")
        else:
            shortcut = slim.conv2d(preact, depth, [1, 1], stride=stride, normalizer_fn=None,
                                   activation_fn=None, scope="shortcut")
        if bottleneck:
            residual = slim.conv2d(preact, depth_bottleneck, [1, 1], scope="conv1")
            residual = resnet_utils.conv2d_same(residual, depth_bottleneck, 3, stride,
                                                rate=rate, scope="conv2")
            residual = slim.conv2d(residual, depth, [1, 1], normalizer_fn=None,
                                   activation_fn=None, scope="conv3")
        else:
            # The stride sits in the last spatial convolution, as in slim's bottleneck, so
            # that a strided unit equals its atrous (dense) twin subsampled.
            residual = slim.conv2d(preact, depth, [3, 3], rate=rate, scope="conv1")
            with slim.arg_scope([slim.conv2d], normalizer_fn=None, activation_fn=None):
                residual = resnet_utils.conv2d_same(residual, depth, 3, stride, rate=rate,
                                                    scope="conv2")
        output = shortcut + residual
        return slim.utils.collect_named_outputs(outputs_collections, sc.name, output)


def cifar_resnet(images: Any, spec: Any, *, output_stride: int | None,
                 is_training: bool) -> tuple[Any, dict[str, Any]]:
    """Builds the backbone described by ``spec`` (a ``model.nets.backbones.Backbone``).

    Args:
        images: float Tensor [N, H, W, 3], preprocessed.
        spec: the registry record (units per stage, base depths, bottleneck flag).
        output_stride: 8, 16 or None (nominal, 16).
        is_training: batch-norm mode.

    Returns:
        features [N, (H-1)/OS+1, (W-1)/OS+1, C] and the end points.
    """
    expansion = 4 if spec.bottleneck else 1
    blocks = [
        resnet_utils.Block(
            f"block{i + 1}",
            unit,
            [
                {
                    "depth": depth * expansion,
                    "depth_bottleneck": depth,
                    "stride": (1 if i == 0 else 2) if j == 0 else 1,
                    "bottleneck": spec.bottleneck,
                    "activate_before_residual": i == 0 and j == 0,
                }
                for j in range(units)
            ],
        )
        for i, (units, depth) in enumerate(zip(spec.units, spec.base_depths, strict=True))
    ]
    with tf.compat.v1.variable_scope(spec.name, values=[images]) as sc:
        collection = sc.original_name_scope + "_end_points"
        with slim.arg_scope([slim.conv2d, unit, resnet_utils.stack_blocks_dense],
                            outputs_collections=collection), \
                slim.arg_scope([slim.batch_norm], is_training=is_training):
            # Pre-activation nets leave the stem linear: the first unit normalises it.
            with slim.arg_scope([slim.conv2d], activation_fn=None, normalizer_fn=None):
                net = resnet_utils.conv2d_same(images, 16, 3, stride=2, scope="conv1")
            net = slim.max_pool2d(net, [3, 3], stride=2, padding="SAME", scope="pool1")
            stride = None if output_stride is None else output_stride // 4
            net = resnet_utils.stack_blocks_dense(net, blocks, stride)
            net = slim.batch_norm(net, activation_fn=tf.nn.relu, scope="postnorm")
        end_points = slim.utils.convert_collection_to_dict(collection)
        return net, end_points
