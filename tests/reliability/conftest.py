"""Helpers of the reliability tests: a process's peak RSS, sampled while it works."""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil

MB = 1024 * 1024


class PeakRss:
    """Samples a process's resident set size every ``interval`` s while in use."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self._process = psutil.Process(pid)
        self._interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def now(self) -> int:
        return int(self._process.memory_info().rss)

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.now())
            except psutil.Error:
                return
            time.sleep(self._interval)

    @contextmanager
    def watching(self) -> Iterator["PeakRss"]:
        self.peak = self.now()
        self._stop.clear()
        thread = threading.Thread(target=self._sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()
            self.peak = max(self.peak, self.now())
