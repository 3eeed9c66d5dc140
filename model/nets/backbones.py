"""The backbone registry: one record per network, built on tf-slim's ResNet code.

A ResNet is a table: each row of ``units`` is a ``Block`` of bottleneck units
(3/4/23/3 for ResNet-101), the unit function comes from the slim family, and
``stack_blocks_dense`` turns the requested ``output_stride`` into atrous rates.
This module imports TensorFlow only when a network is built, so that configs can
be validated without it.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

# DeepLab's ImageNet mean, RGB order (core/preprocess_utils / feature_extractor.py).
MEAN_RGB = (123.15, 115.90, 103.06)

_SLIM_URL = "http://download.tensorflow.org/models/{name}_{date}.tar.gz"


@dataclasses.dataclass(frozen=True)
class Backbone:
    """One backbone: how to build it, preprocess for it and find its checkpoint.

    Attributes:
        name: registry key, also the variable scope (``resnet_v1_101/...``), as in slim.
        family: ``resnet_v1``, ``resnet_v2`` or ``cifar``.
        units: residual units per block (the table row).
        base_depths: bottleneck depth of each block (outputs are 4x for bottlenecks).
        bottleneck: bottleneck units (True) or two 3x3 convolutions (CIFAR basic units).
        nominal_stride: output stride without atrous units.
        preprocessing: ``mean_subtract`` (DeepLab's MEAN_RGB) or ``scale_to_unit`` ([-1, 1]).
        imagenet_url: the official slim ImageNet checkpoint tarball, if one was published.
        imagenet_classes: logits width of that checkpoint (1000 for v1, 1001 for v2).
    """

    name: str
    family: str
    units: tuple[int, ...]
    base_depths: tuple[int, ...]
    bottleneck: bool
    nominal_stride: int
    preprocessing: str
    imagenet_url: str | None = None
    imagenet_classes: int | None = None

    def build(
        self, images: Any, *, output_stride: int | None, is_training: bool
    ) -> tuple[Any, dict[str, Any]]:
        """Runs the backbone on preprocessed images.

        Args:
            images: float Tensor [N, H, W, 3], already preprocessed.
            output_stride: 8, 16, 32, or None for the nominal stride.
            is_training: batch-norm mode.

        Returns:
            features: Tensor [N, (H-1)/OS+1, (W-1)/OS+1, C] for H, W = 32k+1.
            end_points: slim end points by name.
        """
        return _BUILDERS[self.family](self, images, output_stride, is_training)

    def arg_scope(self, *, weight_decay: float, batch_norm_decay: float,
                  batch_norm_epsilon: float) -> Any:
        """The one slim arg_scope with this backbone's hyper-parameters (the head reuses it)."""
        from model.nets.slim_compat import resnet_utils

        return resnet_utils.resnet_arg_scope(
            weight_decay=weight_decay,
            batch_norm_decay=batch_norm_decay,
            batch_norm_epsilon=batch_norm_epsilon,
            batch_norm_scale=True,
        )

    def preprocess(self, images: Any) -> Any:
        """float RGB in [0, 255], [N, H, W, 3] -> the input this backbone was trained on."""
        import tensorflow as tf

        if self.preprocessing == "mean_subtract":
            return images - tf.constant(MEAN_RGB, dtype=images.dtype)
        return images / 127.5 - 1.0


def _build_resnet(spec: Backbone, images: Any, output_stride: int | None,
                  is_training: bool) -> tuple[Any, dict[str, Any]]:
    from model.nets.slim_compat import resnet_v1, resnet_v2

    family = resnet_v1 if spec.family == "resnet_v1" else resnet_v2
    make_block = family.resnet_v1_block if spec.family == "resnet_v1" else family.resnet_v2_block
    last = len(spec.units) - 1
    blocks = [
        make_block(f"block{i + 1}", base_depth=depth, num_units=units,
                   stride=1 if i == last else 2)
        for i, (units, depth) in enumerate(zip(spec.units, spec.base_depths, strict=True))
    ]
    build = resnet_v1.resnet_v1 if spec.family == "resnet_v1" else resnet_v2.resnet_v2
    return build(images, blocks, num_classes=None, is_training=is_training, global_pool=False,
                 output_stride=output_stride, include_root_block=True, scope=spec.name)


def _build_cifar(spec: Backbone, images: Any, output_stride: int | None,
                 is_training: bool) -> tuple[Any, dict[str, Any]]:
    from model.nets import cifar_resnet

    return cifar_resnet.cifar_resnet(images, spec, output_stride=output_stride,
                                     is_training=is_training)


_BUILDERS: dict[str, Callable[..., tuple[Any, dict[str, Any]]]] = {
    "resnet_v1": _build_resnet,
    "resnet_v2": _build_resnet,
    "cifar": _build_cifar,
}

_RESNET_UNITS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}
_SLIM_DATES = {"resnet_v1": "2016_08_28", "resnet_v2": "2017_04_14"}


def _resnet(family: str, depth: int) -> Backbone:
    name = f"{family}_{depth}"
    published = depth != 200  # slim never released ImageNet weights for the 200-layer nets
    return Backbone(
        name=name,
        family=family,
        units=_RESNET_UNITS[depth],
        base_depths=(64, 128, 256, 512),
        bottleneck=True,
        nominal_stride=32,
        preprocessing="mean_subtract" if family == "resnet_v1" else "scale_to_unit",
        imagenet_url=_SLIM_URL.format(name=name, date=_SLIM_DATES[family]) if published else None,
        imagenet_classes=1000 if family == "resnet_v1" else 1001,
    )


BACKBONES: dict[str, Backbone] = {
    spec.name: spec
    for spec in (
        *(_resnet(family, depth) for family in ("resnet_v1", "resnet_v2")
          for depth in _RESNET_UNITS),
        # CIFAR-style ResNets (TF official model): three stages, strides 1/2/2, behind a
        # stride-4 stem so that their 16x nominal stride matches DeepLab's OS16 maps.
        Backbone("cifar_resnet_20", "cifar", (3, 3, 3), (16, 32, 64), False, 16,
                 "scale_to_unit"),
        Backbone("cifar_resnet_29", "cifar", (3, 3, 3), (16, 32, 64), True, 16,
                 "scale_to_unit"),
    )
}


def get_backbone(name: str) -> Backbone:
    """The registry record for ``name``; unknown names list the valid ones."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(
            f"unknown backbone {name!r}; valid backbones: {', '.join(BACKBONES)}"
        ) from None
