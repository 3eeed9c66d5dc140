"""Progress bars for ``segment_many``: tqdm when installed (``atrous-client[progress]``),
else one self-redrawing line on stderr, so the core install stays httpx + numpy + Pillow."""

from __future__ import annotations

import sys
from typing import Protocol, TextIO


class ProgressBar(Protocol):
    def update(self, n: int = 1) -> object: ...

    def close(self) -> object: ...


class NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class LineProgress:
    """``segment  3/10 [######--------------]  30%`` redrawn in place on a text stream."""

    def __init__(self, total: int, desc: str, stream: TextIO | None = None,
                 width: int = 20) -> None:
        self.total, self.desc, self.width = total, desc, width
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self._draw()

    def update(self, n: int = 1) -> None:
        self.done += n
        self._draw()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()

    def _draw(self) -> None:
        fraction = self.done / self.total if self.total else 1.0
        filled = round(fraction * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r{self.desc} {self.done}/{self.total} [{bar}] {fraction:4.0%}")
        self.stream.flush()


def progress_bar(enabled: bool, total: int, desc: str = "segment") -> ProgressBar:
    if not enabled:
        return NoProgress()
    try:
        from tqdm.auto import tqdm  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        return LineProgress(total, desc)
    bar: ProgressBar = tqdm(total=total, desc=desc, unit="image")
    return bar
