"""A live alternate signal stack for the main thread, before handling signals that matter.

Python installs its signal handlers with ``SA_ONSTACK``: they run on the thread's alternate
signal stack when there is one.  OpenVINO's CPU plugin swaps that stack for its own while a
``Core`` lives and, when two Cores die in the order they were made, leaves the main thread
on a stack it has already freed; the next handled signal is then a segfault (for training:
the SIGTERM meant to save a checkpoint and stop).  ``model.inference.runtimes.openvino``
keeps to one Core for that reason, but a process may hold other Cores (NNCF makes one per
calibration engine), so code that relies on a signal handler installs a stack of its own
first.  See docs/runtimes.md, "One process".
"""

from __future__ import annotations

import ctypes
import sys
import threading

# Ample for the kernel's signal frame with AVX-512 state, the dynamic linker's lazy
# binding (it saves that state again) and Python's C handler.
STACK_BYTES = 256 * 1024


class _StackT(ctypes.Structure):
    """``stack_t`` of <signal.h> on Linux."""

    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int),
                ("ss_size", ctypes.c_size_t)]


_stack: ctypes.Array[ctypes.c_char] | None = None  # ours, alive as long as the process


def current() -> tuple[int | None, int]:
    """The calling thread's alternate signal stack: (address, size); (None, 0) when none or
    not on Linux."""
    if not sys.platform.startswith("linux"):
        return None, 0
    state = _StackT()
    if ctypes.CDLL(None, use_errno=True).sigaltstack(None, ctypes.byref(state)) != 0:
        return None, 0
    return state.ss_sp, int(state.ss_size)


def install_own_stack() -> bool:
    """Gives the main thread an alternate signal stack owned by this module (made once, never
    freed); a no-op elsewhere than Linux or off the main thread.  Returns whether it did."""
    global _stack
    if not sys.platform.startswith("linux") or (
            threading.current_thread() is not threading.main_thread()):
        return False
    if _stack is None:
        _stack = ctypes.create_string_buffer(STACK_BYTES)
    state = _StackT(ctypes.cast(_stack, ctypes.c_void_p).value, 0, STACK_BYTES)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.sigaltstack(ctypes.byref(state), None) != 0:
        # EPERM: this thread is running on its alternate stack right now (inside a handler).
        return False
    return True


def own_stack_address() -> int | None:
    """Where ``install_own_stack`` put the stack (None before its first call)."""
    return None if _stack is None else ctypes.cast(_stack, ctypes.c_void_p).value
