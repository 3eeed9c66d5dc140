"""Runs three training steps on a fixed global batch and writes the losses as JSON.

``python -m tests.train.distributed_worker INIT OUT`` with ``TF_CONFIG`` naming this
process one of two workers: first both take the ``MultiWorkerMirroredStrategy`` steps
together, then worker 0 takes them alone on one device and worker 1 with
``MirroredStrategy`` over two logical CPU devices.  (Two processes, not three: on two cores
importing TensorFlow and tracing dominate.  The mirrored run reduces through one device,
not with collectives, whose instance keys would collide with the multi-worker ones.)

Batch norm is frozen: replicas normalise with their own batch statistics (as DeepLab's
towers), so only then is N replicas' loss one device's loss exactly.
"""

import json
import os
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
    init, out = sys.argv[1:3]
    import tensorflow as tf

    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    scratch = Path(tempfile.mkdtemp())
    multi_worker = tf.distribute.MultiWorkerMirroredStrategy()
    result = {"multi-worker": losses(multi_worker, init, scratch / "mw"),
              "multi-worker replicas": multi_worker.num_replicas_in_sync}
    if index == 0:
        result["single"] = losses(None, init, scratch / "single")
    else:
        mirrored = tf.distribute.MirroredStrategy(
            ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())
        result["mirrored"] = losses(mirrored, init, scratch / "mirrored")
        result["mirrored replicas"] = mirrored.num_replicas_in_sync
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
