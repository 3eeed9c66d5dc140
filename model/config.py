"""The model's one configuration object: frozen, validated at construction, passed explicitly.

Nothing in ``model/`` reads flags or environment variables; callers build a
``ModelConfig`` and derive variants with ``dataclasses.replace``.
"""

import dataclasses

OUTPUT_STRIDES = (8, 16, 32)
HEADS = ("logits", "aspp")
PRECISIONS = ("fp32", "fp16", "bf16")
DEFAULT_BACKBONE = "resnet_v1_101"
DEFAULT_INPUT_SIZE = 513


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """What a segmentation network is: backbone, density, head, classes and input size.

    Attributes:
        backbone: a name from ``model.nets.backbones.BACKBONES``.
        output_stride: input/feature resolution ratio, 8, 16 or 32 (atrous units reach it).
        num_classes: logits channels (21 for PASCAL VOC).
        head: ``"logits"`` (one 1x1 convolution) or ``"aspp"`` (DeepLabv3 ASPP then 1x1).
        input_size: side of the square network input; must be 32k+1 (513 in DeepLab).
        precision: compute dtype, ``fp32``, ``fp16`` or ``bf16`` (variables stay fp32).
        weight_decay, batch_norm_decay, batch_norm_epsilon: the slim arg_scope parameters.
    """

    backbone: str = DEFAULT_BACKBONE
    output_stride: int = 16
    num_classes: int = 21
    head: str = "logits"
    input_size: int = DEFAULT_INPUT_SIZE
    precision: str = "fp32"
    weight_decay: float = 1e-4
    batch_norm_decay: float = 0.997
    batch_norm_epsilon: float = 1e-5

    def __post_init__(self) -> None:
        # Imported here so that config stays importable without TensorFlow.
        from model.nets.backbones import BACKBONES

        if self.backbone not in BACKBONES:
            raise ValueError(
                f"unknown backbone {self.backbone!r}; valid backbones: {', '.join(BACKBONES)}"
            )
        if self.output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"output_stride must be 8, 16 or 32, got {self.output_stride!r}")
        nominal = BACKBONES[self.backbone].nominal_stride
        if self.output_stride > nominal:
            raise ValueError(
                f"output_stride {self.output_stride} exceeds the nominal stride {nominal} "
                f"of {self.backbone}; use one of "
                f"{', '.join(str(s) for s in OUTPUT_STRIDES if s <= nominal)}"
            )
        if not isinstance(self.num_classes, int) or self.num_classes < 1 or self.num_classes > 256:
            raise ValueError(f"num_classes must be between 1 and 256, got {self.num_classes!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if (
            not isinstance(self.input_size, int)
            or self.input_size < 33
            or (self.input_size - 1) % 32
        ):
            raise ValueError(
                f"input_size must be 32k+1 and at least 33 (e.g. 321, 513), got {self.input_size!r}"
            )

        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    @property
    def logits_size(self) -> int:
        """Side of the logits map for a square ``input_size`` input ((S-1)/OS + 1)."""
        return (self.input_size - 1) // self.output_stride + 1
