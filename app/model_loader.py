"""Settings -> a warmed ``Segmenter``: the only place the server touches TensorFlow set-up.

A SavedModel is loaded as is; a checkpoint is exported (and cached) first; with neither,
the default random-initialised network is exported and served, with a loud warning.
``model.export`` (and so tf-slim) is imported only in the last two cases, at start-up:
the request path never imports it.
"""

import dataclasses
import logging
import warnings
from pathlib import Path

from app.settings import Settings
from model.runner import SavedModelRunner, Segmenter

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A warmed segmenter and what the server reports about it."""

    segmenter: Segmenter
    path: Path
    device: str
    oom_errors: tuple[type[BaseException], ...]


def configure_devices(memory_growth: bool) -> str:
    """Turns on GPU memory growth (before anything allocates) and names the device used."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, memory_growth)
        except RuntimeError as e:  # already initialised in this process: keep going
            log.warning("could not set memory growth on %s: %s", gpu.name, e)
    if not gpus:
        return "CPU"
    details = tf.config.experimental.get_device_details(gpus[0])
    name = details.get("device_name", "GPU")
    return f"GPU:0 ({name})" + (f" + {len(gpus) - 1} more" if len(gpus) > 1 else "")


def resolve_saved_model(settings: Settings) -> Path:
    """The SavedModel directory to serve, exporting (cached) a checkpoint or the default."""
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
        path = cached_export(config, settings.cache_dir, checkpoint=settings.checkpoint,
                             precision=settings.precision)
    for warning in caught:
        log.warning("export: %s", warning.message)
    return path


def load_segmenter(settings: Settings) -> LoadedModel:
    """Loads (exporting first if needed) and warms up every batch size the batcher can form."""
    import tensorflow as tf

    device = configure_devices(settings.gpu_memory_growth)
    path = resolve_saved_model(settings)
    log.info("loading %s on %s; warming up batch sizes 1..%d", path, device,
             settings.max_batch_size)
    runner = SavedModelRunner(path, warmup_batch_sizes=range(1, settings.max_batch_size + 1))
    return LoadedModel(segmenter=runner, path=path, device=device,
                       oom_errors=(tf.errors.ResourceExhaustedError, MemoryError))
