"""The engines that can run an exported model, behind one seam (``contract.Segmenter``).

``load_runtime`` is the only way in: the pipeline, the server and the CLI never know
which engine runs.  Each runtime module imports its engine lazily, inside its loader.
"""

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from model.inference.contract import Segmenter

DEFAULT_RUNTIME = "tensorflow"


def _tensorflow(path: Path, warmup_batch_sizes: Iterable[int], **options: Any) -> Segmenter:
    from model.inference.runtimes.savedmodel import SavedModelRunner

    return SavedModelRunner(path, warmup_batch_sizes, **options)


RUNTIMES: dict[str, Callable[..., Segmenter]] = {"tensorflow": _tensorflow}


def load_runtime(path: str | Path, runtime: str = DEFAULT_RUNTIME, *,
                 warmup_batch_sizes: Iterable[int] = (),
                 gpu_memory_growth: bool = True) -> Segmenter:
    """Loads the model at ``path`` with the named runtime and warms it up.

    Raises:
        ValueError: an unknown runtime name (the message lists the valid ones).
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; valid runtimes: {', '.join(RUNTIMES)}")
    return RUNTIMES[runtime](Path(path), warmup_batch_sizes, gpu_memory_growth=gpu_memory_growth)
