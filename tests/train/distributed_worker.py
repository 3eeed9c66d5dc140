"""Runs three training steps on a fixed global batch and writes the losses as JSON.

``python -m tests.train.distributed_worker local INIT OUT``: one device, then
``MirroredStrategy`` over two logical CPU devices, in one process.
``python -m tests.train.distributed_worker worker INIT OUT`` (with ``TF_CONFIG``): one
worker of a ``MultiWorkerMirroredStrategy`` cluster.  (One process cannot hold both
kinds: their collective instance keys collide.)

Batch norm is frozen: replicas normalise with their own batch statistics (as DeepLab's
towers), so only then is N replicas' loss one device's loss exactly.
"""

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

STEPS = 3


def fixed_batch():
    import tensorflow as tf

    rng = np.random.default_rng(7)
    images = rng.uniform(0, 255, (4, 65, 65, 3)).astype(np.float32)
    labels = rng.integers(0, 21, (4, 65, 65, 1)).astype(np.uint8)
    labels[:, :5] = 255
    labels[1, 20:] = 255  # replicas count different pixels: the global mean must hold
    return tf.constant(images), tf.constant(labels)


def losses(strategy, init: str, run_dir: Path) -> list[float]:
    from model.train import objective
    from model.train.trainer import Trainer
    from tests.train.training_factory import TINY, TINY_BACKBONE, tiny_train_config

    trainer = Trainer(TINY, tiny_train_config(batch_size=4, fine_tune_batch_norm=False,
                                              learning_rate=0.05),
                      run_dir, strategy=strategy, backbone=TINY_BACKBONE)
    objective.init_from_checkpoint(trainer.variables, init, TINY)
    images, labels = fixed_batch()
    return [trainer.step(images, labels, step)["loss"] for step in range(STEPS)]


def main() -> None:
    mode, init, out = sys.argv[1:4]
    import tensorflow as tf

    scratch = Path(tempfile.mkdtemp())
    if mode == "worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        result = {"multi-worker": losses(strategy, init, scratch / "mw"),
                  "replicas": strategy.num_replicas_in_sync}
    else:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        result = {"single": losses(None, init, scratch / "single"),
                  "mirrored": losses(mirrored, init, scratch / "mirrored"),
                  "replicas": mirrored.num_replicas_in_sync}
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
