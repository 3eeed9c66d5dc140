"""Settings -> a warmed ``Segmenter``: what the server serves, on which runtime.

A model directory (SavedModel, OpenVINO or ONNX export) is loaded as is, by the runtime
``ATROUS_RUNTIME`` names (``auto``: the fastest installed for its format and device); a
checkpoint is exported (and cached) as a SavedModel first; with neither, the default
random-initialised network is exported and served, with a loud warning.  ``model.export``
(and so tf-slim) is imported only in the last two cases, at start-up: the request path
never imports it.
"""

import dataclasses
import logging
import warnings
from pathlib import Path

from app.settings import Settings
from model.inference.contract import Segmenter
from model.inference.runtimes import load_runtime

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A warmed segmenter and where it came from."""

    segmenter: Segmenter
    path: Path


def resolve_model_dir(settings: Settings) -> Path:
    """The model directory to serve, exporting (cached) a checkpoint or the default."""
    if settings.model is not None:
        return settings.model
    from model.export import cached_export  # start-up only: imports tf-slim

    config = settings.to_model_config()
    if settings.checkpoint is None:
        log.warning("=" * 72)
        log.warning("NO MODEL OR CHECKPOINT GIVEN: serving a RANDOMLY INITIALISED %s "
                    "(output stride %d); its masks are meaningless. Set ATROUS_MODEL or "
                    "ATROUS_CHECKPOINT.", config.backbone, config.output_stride)
        log.warning("=" * 72)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = cached_export(config, settings.cache_dir, checkpoint=settings.checkpoint)
    # Once per distinct message: tf-slim's graph building repeats its deprecation notices
    # once per layer (over a hundred lines for ResNet-101), which buried the one that matters.
    for message in dict.fromkeys(str(warning.message) for warning in caught):
        log.warning("export: %s", message)
    return path


def load_segmenter(settings: Settings) -> LoadedModel:
    """Loads (exporting first if needed) and warms up every batch size the batcher can form."""
    if settings.model is None:
        # Exporting runs TensorFlow: GPU memory growth must be set before it allocates.
        from model.inference.runtimes.savedmodel import configure_devices

        configure_devices(settings.gpu_memory_growth, settings.threads)
    path = resolve_model_dir(settings)
    log.info("loading %s with runtime %s; warming up batch sizes 1..%d", path, settings.runtime,
             settings.max_batch_size)
    segmenter = load_runtime(path, settings.runtime, threads=settings.threads,
                             warmup_batch_sizes=range(1, settings.max_batch_size + 1),
                             gpu_memory_growth=settings.gpu_memory_growth,
                             inference_precision=settings.inference_precision)
    log.info("runtime %s %s on %s; inference precision %s", segmenter.runtime,
             segmenter.runtime_version, segmenter.device, segmenter.inference_precision.reason)
    return LoadedModel(segmenter=segmenter, path=path)
