"""Tiny training configurations shared by the training tests."""

import dataclasses

from model.config import ModelConfig
from model.nets.backbones import get_backbone
from model.train.augment import AugmentConfig
from model.train.trainer import TrainConfig

TINY = ModelConfig(backbone="cifar_resnet_20", input_size=65)
# One unit per stage: the registry's names, a third of the graph (tracing dominates here).
TINY_BACKBONE = dataclasses.replace(get_backbone("cifar_resnet_20"), units=(1, 1, 1),
                                    base_depths=(4, 8, 8))


def tiny_train_config(**overrides: object) -> TrainConfig:
    values: dict[str, object] = dict(steps=4, batch_size=2, augment=AugmentConfig(crop_size=65),
                                     save_every=2, log_every=1, image_every=1000,
                                     learning_rate=0.02)
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]
