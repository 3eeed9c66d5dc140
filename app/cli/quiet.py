"""Keeps TensorFlow's start-up chatter out of the command line unless ``--verbose``.

Importing TensorFlow 2.21 prints, on every command that needs it: absl's "All log messages
before absl::InitializeLog() ..." banner, oneDNN and "no CUDA drivers" notes (twice: two
shared libraries each log them), a cuInit error on machines without a GPU, then Python-side
deprecation warnings from tf-slim's TF1 calls ("resize_bilinear is deprecated",
"`layer.apply` is deprecated").  None of it is actionable for a user of ``atrous``.

The C++ lines are written by absl before anything initialises its logging, so
``TF_CPP_MIN_LOG_LEVEL`` cannot reach them (it does silence the later cuInit error): they are
caught by pointing file descriptor 2 at a temporary file while ``import tensorflow`` runs,
and written out after all if the import fails.  The rest are ordinary Python loggers and
warnings.  ``quiet_tensorflow`` must run before TensorFlow is first imported; the commands
import it lazily, so ``main`` calls it right after parsing the arguments.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
import tempfile
import threading
import types
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

# The Python side of the chatter: TensorFlow's deprecation notes and "SavedModel written to",
# absl-py's, and tf-slim's Keras-1 layer calls.
_LOGGERS = ("tensorflow", "absl")
_WARNINGS = ("`layer.apply` is deprecated",)


def quiet_tensorflow(verbose: bool) -> None:
    """Silences TensorFlow's start-up output in this process, unless ``verbose``.

    An explicit ``TF_CPP_MIN_LOG_LEVEL`` in the environment is kept either way.
    """
    if verbose:
        return
    # 3: C++ FATAL only (the cuInit "error" on a CPU-only machine is level 2).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for message in _WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=UserWarning)
    if "tensorflow" not in sys.modules and not any(
            isinstance(finder, _QuietImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport("tensorflow"))


@contextlib.contextmanager
def stderr_swallowed() -> Iterator[None]:
    """Sends what this process writes to file descriptor 2 (C++ included) to a temporary file;
    replays it if the block raises, so a failure still says why."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            sys.stderr.flush()
            os.dup2(saved, 2)
            sink.seek(0)
            os.write(2, sink.read())
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


class _QuietImport(importlib.abc.MetaPathFinder):
    """Imports one top-level package with its stderr swallowed, once."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once, and so that the search below finds the real one
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    """A package's own loader, its ``exec_module`` run inside ``stderr_swallowed``."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        # File descriptor 2 belongs to the whole process: swapping it while other threads
        # run (``atrous serve`` imports TensorFlow in its model-loading thread) would throw
        # their logs away. Off the main thread, only the log level and filters apply.
        quiet = threading.current_thread() is threading.main_thread()
        with stderr_swallowed() if quiet else contextlib.nullcontext():
            self._loader.exec_module(module)

    def __getattr__(self, name: str) -> Any:  # resource readers and the like
        return getattr(self._loader, name)
