"""The one door through which atrous imports tf-slim.

tf-slim 1.1.0 (the newest release) imports ``tf_keras.legacy_tf_layers``, a module
that tf-keras >= 2.16 moved to ``tf_keras.src.legacy_tf_layers``.  Registering the
old names in ``sys.modules`` before ``import tf_slim`` lets it load unchanged on
TensorFlow 2.21.  Every other module imports ``slim`` and the slim nets from here,
so the shim lives in exactly one place and can be deleted once tf-slim is fixed.

The serving path (``model.inference.runtimes.savedmodel`` and ``app``) never imports this module.
"""

import importlib
import sys

_LEGACY = "tf_keras.legacy_tf_layers"
_MOVED_TO = "tf_keras.src.legacy_tf_layers"
_SUBMODULES = ("base", "convolutional", "core", "normalization", "pooling")


def _register_legacy_layers_alias() -> None:
    if _LEGACY in sys.modules:
        return
    sys.modules[_LEGACY] = importlib.import_module(_MOVED_TO)
    for name in _SUBMODULES:
        sys.modules[f"{_LEGACY}.{name}"] = importlib.import_module(f"{_MOVED_TO}.{name}")


_register_legacy_layers_alias()

import tf_slim as slim  # noqa: E402
from tf_slim.nets import resnet_utils, resnet_v1, resnet_v2  # noqa: E402

__all__ = ["slim", "resnet_utils", "resnet_v1", "resnet_v2"]
