"""Fault injection for the reliability tests: a runtime call that raises, or never returns.

``ATROUS_TEST_FAULT=raise@N`` makes the N-th model call (counting every call of the
batcher, labels and probabilities alike, from 1) raise ``InjectedFault``;
``ATROUS_TEST_FAULT=hang@N`` makes it block forever, as a wedged runtime would.  The
wrapper sits where the batcher receives the model, so everything above it (the typed
per-batch error, the watchdog that notices a hung call) runs its real code path.  Unset,
the model functions are used as they are.
"""

import itertools
import threading
from collections.abc import Callable

import numpy as np

ModelFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


class InjectedFault(RuntimeError):
    """The failure ``ATROUS_TEST_FAULT`` asked for."""


def inject(fault: str | None, *models: ModelFn | None) -> tuple[ModelFn | None, ...]:
    """``models`` wrapped so that the call ``fault`` names misbehaves (all share one count)."""
    if fault is None:
        return models
    kind, _, number = fault.partition("@")
    target = int(number)
    counter = itertools.count(1)
    lock = threading.Lock()
    never = threading.Event()

    def wrap(model: ModelFn) -> ModelFn:
        def call(images: np.ndarray, sizes: np.ndarray) -> np.ndarray:
            with lock:
                number = next(counter)
            if number == target:
                if kind == "hang":
                    never.wait()
                raise InjectedFault(f"injected fault: model call {number} raised")
            return model(images, sizes)

        return call

    return tuple(None if model is None else wrap(model) for model in models)
