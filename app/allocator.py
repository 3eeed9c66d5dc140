"""glibc's allocator, set for a server that decodes and encodes an image per request.

Left to its defaults, glibc hands every freed block above its trim threshold back to the
system and maps big blocks afresh, so each request's decoded image, letterbox and mask
came from new pages: their page faults cost more than the JPEG decode itself (a 640x480
JPEG: 2.1 ms to decode and orient with the defaults, 0.9 ms with the settings below;
benchmarks/RESULTS.md, "The host path").  Blocks up to ``MMAP_THRESHOLD`` now come from
the heap and up to ``TRIM_THRESHOLD`` of freed memory stays there for the next request;
bigger images (over ~4 megapixels) are mapped and unmapped as before.  An unloaded model's
memory is still given back at once (``return_freed_memory``).

Nothing happens where the C library is not glibc, or where the operator set glibc's own
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` variables (theirs win).
"""

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 16 * 1024 * 1024
TRIM_THRESHOLD = 32 * 1024 * 1024
# mallopt's parameter numbers (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_OPERATOR_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory() -> bool:
    """Sets the thresholds above in this process; whether they were set."""
    if any(name in os.environ for name in _OPERATOR_VARIABLES):
        return False
    libc = _glibc()
    if libc is None:
        return False
    done = (libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    if done:
        log.debug("malloc: blocks up to %d MB from the heap, %d MB of freed memory kept",
                  MMAP_THRESHOLD >> 20, TRIM_THRESHOLD >> 20)
    return done


def return_freed_memory() -> None:
    """Asks glibc to give freed heap pages back to the system: an unloaded ONNX Runtime
    session's arena is freed to malloc, whose free lists would otherwise keep it in the
    process's RSS (benchmarks/RESULTS.md, "Hot swaps")."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt  # noqa: B018 - musl and macOS have no mallopt: raises AttributeError
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc
