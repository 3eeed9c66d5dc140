"""The slim network as a TF2 module: eager, ``tf.function`` and ``tf.distribute`` ready.

Why TF2 with the ``track_tf1_style_variables`` shim and not a TF1 graph-mode loop like
DeepLab's ``train.py``:

* **Names.** The shim runs ``model.network`` unchanged: its ``variable_scope``s and
  ``get_variable`` calls create (and on later calls reuse) variables named exactly as in
  the serving graph (``resnet_v1_101/block1/unit_1/bottleneck_v1/conv1/weights``,
  ``logits/semantic/biases``).  Checkpoints are written under those names (see
  ``model.train.run``), so ``model.checkpoints.restore`` and ``model.export`` read a
  training run like any other checkpoint.  ``tests/train`` checks the names match.
* **Distribution.** TF2 strategies run eagerly: ``MirroredStrategy`` and
  ``MultiWorkerMirroredStrategy`` (``TF_CONFIG``) take the same ``strategy.run`` step.
  In graph mode the only multi-worker path is the deprecated V1 collective strategy
  with a hand-configured ``tf.distribute.Server`` and session per worker, which the
  TF2 strategies replaced.

Batch-norm moving averages are updated inside the step (automatic control
dependencies of ``tf.function``), so no ``UPDATE_OPS`` collection is needed.
"""

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import tensorflow as tf
from tf_keras.src.legacy_tf_layers.variable_scope_shim import track_tf1_style_variables

from model.config import ModelConfig
from model.nets import network
from model.nets.backbones import Backbone


@contextlib.contextmanager
def _quiet_slim_updates() -> Iterator[None]:
    """tf-slim's layers call ``layer.apply`` and read ``layer.updates``, which TF2 deprecates
    (eager and ``tf.function`` apply the updates themselves: what this module relies on).
    One warning per layer per trace is noise to a user watching ``atrous train``."""
    with warnings.catch_warnings():
        for message in ("`layer.updates` will be removed", "`layer.apply` is deprecated"):
            warnings.filterwarnings("ignore", message=message, category=UserWarning)
        yield


class SegmentationModule(tf.Module):
    """``model.network`` with its variables owned by a ``tf.Module``.

    Args:
        config: the network configuration (``config.precision`` is the compute dtype;
            variables stay float32).
        backbone: overrides the registry record (tests use tiny block tables).
    """

    def __init__(self, config: ModelConfig, backbone: Backbone | None = None) -> None:
        super().__init__(name=None)
        self.config = config
        self.backbone = backbone

    @track_tf1_style_variables
    def logits(self, images: Any, *, is_training: bool) -> Any:
        """float32 RGB [N, H, W, 3] in [0, 255] -> float32 logits [N, h, w, classes]."""
        with _quiet_slim_updates():
            logits, _ = network.segmentation_logits(images, self.config,
                                                    is_training=is_training,
                                                    backbone=self.backbone, regularize=False)
        return logits

    @track_tf1_style_variables
    def labels(self, images: Any, sizes: Any) -> Any:
        """The serving graph: uint8 [N, S, S, 3] + int32 [N, 2] -> uint8 [N, S, S]."""
        with _quiet_slim_updates():
            return network.predict_labels(images, sizes, self.config, regularize=False)

    def build(self) -> None:
        """Creates every variable (in inference mode, so no moving average moves)."""
        size = self.config.input_size
        self.logits(tf.zeros([1, size, size, 3]), is_training=False)

    def named_variables(self) -> dict[str, Any]:
        """Graph name (no ``:0``) -> variable; the checkpoint names."""
        return {v.name.split(":")[0]: v for v in self.variables}

    def named_trainable_variables(self) -> dict[str, Any]:
        return {v.name.split(":")[0]: v for v in self.trainable_variables}
