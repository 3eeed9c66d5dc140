"""The forward timing harness: burn-in steps, then N timed batches, mean +- sd.

It follows the seed's ``time_tensorflow_run``: random inputs generated on the device
(so no feed or copy is timed), ``burn_in`` untimed steps, then ``num_batches`` timed
runs of the output op.  Two settings:

* ``classification``: slim ResNet-152 v2, 224x224, batch 32, 1000 classes (the seed's);
* ``segmentation``: atrous's inference graph, ResNet-101 v1 OS16 513x513 with argmax.
"""

import dataclasses
import time

import tensorflow as tf
from tqdm import tqdm

from model.config import ModelConfig
from model.inference.timing import mean_and_sd
from model.nets import network


@dataclasses.dataclass(frozen=True)
class BenchResult:
    setting: str
    backbone: str
    image_size: int
    batch_size: int
    precision: str
    xla: bool
    device: str
    mean_s: float
    sd_s: float
    num_batches: int

    @property
    def images_per_s(self) -> float:
        return self.batch_size / self.mean_s

    def row(self) -> str:
        return (f"| {self.setting} | {self.backbone} | {self.image_size} | {self.batch_size} | "
                f"{self.precision} | {'on' if self.xla else 'off'} | {self.device} | "
                f"{self.mean_s:.4f} ± {self.sd_s:.4f} | {self.images_per_s:.2f} |")


HEADER = ("| setting | backbone | size | batch | precision | XLA | device | s/batch (mean ± sd) "
          "| images/s |\n|---|---|---|---|---|---|---|---|---|")


def _output_op(setting: str, batch: int, precision: str) -> tuple[tf.Tensor, str, int]:
    if setting == "classification":
        from model.nets.slim_compat import resnet_utils, resnet_v2, slim

        size = 224
        images = tf.random.uniform([batch, size, size, 3], -1.0, 1.0)
        with slim.arg_scope(resnet_utils.resnet_arg_scope()):
            logits, _ = resnet_v2.resnet_v2_152(tf.cast(images, network.COMPUTE_DTYPES[precision]),
                                                num_classes=1000,
                                                is_training=False)
        return tf.cast(logits, tf.float32), "resnet_v2_152", size
    config = ModelConfig(precision=precision)
    size = config.input_size
    images = tf.cast(tf.random.uniform([batch, size, size, 3], 0, 256, tf.int32), tf.uint8)
    sizes = tf.fill([batch, 2], size)
    return network.predict_labels(images, sizes, config), config.backbone, size


def time_forward(setting: str, batch_size: int, *, num_batches: int = 20, burn_in: int = 10,
                 precision: str = "fp32", xla: bool = False,
                 progress: bool = True) -> BenchResult:
    """Times the forward pass of one setting; weights are random (speed does not care)."""
    graph = tf.Graph()
    with graph.as_default():
        output, backbone, size = _output_op(setting, batch_size, precision)
        config = tf.compat.v1.ConfigProto()
        config.gpu_options.allow_growth = True
        if xla:
            config.graph_options.optimizer_options.global_jit_level = (
                tf.compat.v1.OptimizerOptions.ON_1)
        device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
        with tf.compat.v1.Session(graph=graph, config=config) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            durations = []
            steps = tqdm(range(burn_in + num_batches), disable=not progress,
                         desc=f"{setting} batch {batch_size}")
            for step in steps:
                start = time.perf_counter()
                session.run(output.op)
                if step >= burn_in:
                    durations.append(time.perf_counter() - start)
    mean, sd = mean_and_sd(durations)
    return BenchResult(setting, backbone, size, batch_size, precision, xla, device, mean, sd,
                       num_batches)

