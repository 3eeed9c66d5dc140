"""OpenVINO and signals in one process (docs/runtimes.md, "One process").

OpenVINO's CPU plugin swaps the main thread's alternate signal stack while a Core lives;
two Cores dropped in the order they were made left it on freed memory, and the next Python
signal handler (they run on that stack) segfaulted: a test worker died that way when a
SIGTERM-resume training test followed one that had loaded the SavedModel with OpenVINO.
The crashes run in child processes, where a failure is a return code, not a lost worker.
"""

import subprocess
import sys
from pathlib import Path

from model import signal_stack
from tests.conftest import REPO

# A Python SIGTERM handler, the signal, then proof of life; the bytearrays reuse what the
# Cores freed, so that a stale stack is not left readable by chance.
SIGNAL_SURVIVES = """
import gc, os, signal
gc.collect()
signal.signal(signal.SIGTERM, lambda *_: print("handled", flush=True))
junk = [bytearray(1 << 16) for _ in range(2000)]
os.kill(os.getpid(), signal.SIGTERM)
print("survived", flush=True)
"""


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_two_openvino_runners_dropped_in_creation_order_leave_signals_working(
        tiny_saved_model: Path) -> None:
    done = run_python(f"""
from model.inference.runtimes.openvino import OpenVINORunner
first = OpenVINORunner({str(tiny_saved_model)!r})
second = OpenVINORunner({str(tiny_saved_model)!r})
del first   # first made, first dropped: what a model swap in a server does
del second
{SIGNAL_SURVIVES}""")
    assert done.returncode == 0, (done.returncode, done.stderr[-3000:])
    assert done.stdout.split() == ["handled", "survived"]


def test_the_trainer_handles_signals_on_a_stack_of_its_own() -> None:
    # Cores the runtime does not own (NNCF's calibration engines make their own) can still
    # leave a freed stack behind; what runs before a signal that matters installs its own.
    foreign_cores = """
import numpy as np
import openvino as ov
from openvino import opset13

def compiled():
    x = opset13.parameter([1, 8], np.float32)
    return ov.Core().compile_model(ov.Model([opset13.relu(x)], [x]), "CPU")

first, second = compiled(), compiled()
del first
del second
"""
    crashed = run_python(foreign_cores + SIGNAL_SURVIVES)
    # The hazard is real (a canary: if a new OpenVINO stops this, the guard may go).
    assert crashed.returncode != 0 and "survived" not in crashed.stdout, crashed.stdout
    guarded = run_python(foreign_cores + "from model import signal_stack\n"
                         "assert signal_stack.install_own_stack()\n" + SIGNAL_SURVIVES)
    assert guarded.returncode == 0, (guarded.returncode, guarded.stderr[-3000:])
    assert guarded.stdout.split() == ["handled", "survived"]


def test_the_training_loop_installs_that_stack_while_it_listens() -> None:
    from model.train.trainer import _stop_on_signals

    with _stop_on_signals():
        address, size = signal_stack.current()
        assert address == signal_stack.own_stack_address() is not None
        assert size == signal_stack.STACK_BYTES
