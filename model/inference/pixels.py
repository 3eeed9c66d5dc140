"""A Pillow image's pixels as a numpy array, without copying them.

``np.asarray(image)`` goes through ``Image.tobytes``: Pillow packs the pixels into 64 KB
chunks, joins them into one new ``bytes`` and numpy reads that; all of it holds the GIL, and
the fresh megabytes cost page faults.  In a server with one process that was a third of the
decode threads' time under the GIL (``py-spy --gil``; RESULTS "Pixels without the copy").

Pillow (11.2 and later) exports an image's own memory through the Arrow C data interface
(``Image.__arrow_c_array__``), a stable ABI.  ``shared`` reads the data pointer from it and
hands numpy a read-only array over that memory (Pillow keeps RGB as four bytes per pixel:
the view leaves the fourth out).  The array holds the Arrow capsule, so Pillow's memory
lives as long as the view does.

Pillow exports only images whose rows are one block of memory (up to its 16 MB block size);
a bigger image, or a mode with another layout, falls back to the copy.
"""

import ctypes

import numpy as np
from PIL import Image


class _ArrowArray(ctypes.Structure):
    """``struct ArrowArray`` of the Arrow C data interface."""


_ArrowArray._fields_ = [
    ("length", ctypes.c_int64),
    ("null_count", ctypes.c_int64),
    ("offset", ctypes.c_int64),
    ("n_buffers", ctypes.c_int64),
    ("n_children", ctypes.c_int64),
    ("buffers", ctypes.POINTER(ctypes.c_void_p)),
    ("children", ctypes.POINTER(ctypes.POINTER(_ArrowArray))),
    ("dictionary", ctypes.POINTER(_ArrowArray)),
    ("release", ctypes.c_void_p),
    ("private_data", ctypes.c_void_p),
]

_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]

_BANDS = {"L": 1, "P": 1, "RGB": 4, "RGBA": 4}  # bytes per pixel in Pillow's memory


class _Exported:
    """Holds the Arrow capsules and tells numpy where their pixels are."""

    def __init__(self, image: Image.Image, bands: int) -> None:
        self._capsules = image.__arrow_c_array__()
        array = _ArrowArray.from_address(_capsule_pointer(self._capsules[1], b"arrow_array"))
        # Four-byte pixels are a fixed-size list of uint8: the bytes are its child's.
        values = array.children[0].contents if bands > 1 else array
        width, height = image.size
        if (values.n_buffers != 2 or not values.buffers[1]
                or values.length < width * height * bands):
            raise ValueError("unexpected Arrow export")
        self.__array_interface__ = {
            "version": 3,
            "typestr": "|u1",
            "shape": (height, width, bands) if bands > 1 else (height, width),
            "data": (values.buffers[1] + values.offset, True),
        }


def shared(image: Image.Image) -> np.ndarray | None:
    """The image's pixels as ``np.asarray(image)`` gives them, read-only, over Pillow's own
    memory; None where Pillow cannot export them (rows in several blocks, other modes).

    Returns:
        uint8 [height, width] for ``L``/``P``, [height, width, bands] for ``RGB``/``RGBA``.
    """
    bands = _BANDS.get(image.mode)
    if bands is None or image.width == 0 or image.height == 0:
        return None
    try:  # the export decodes a lazily opened image first
        pixels = np.asarray(_Exported(image, bands))
    except ValueError:  # "Image rows are not contiguous in memory"
        return None
    return pixels[..., :3] if image.mode == "RGB" else pixels


def view(image: Image.Image) -> np.ndarray:
    """``np.asarray(image)``, without the copy where Pillow can share its memory."""
    pixels = shared(image)
    return np.asarray(image) if pixels is None else pixels
