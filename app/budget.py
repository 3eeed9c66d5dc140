"""The server's memory budget: how many estimated bytes of work are admitted at once.

Every ``/segment`` request reserves an estimate of the memory its work will hold (the
decoded image, its model inputs, the merge of its tiles' probabilities and its outputs:
``model.inference.augmented.working_bytes``) before it decodes, and gives it back when it
is answered.  While the reservations would exceed the budget a request waits, first come
first served, until its deadline; when a whole budget's worth is already waiting it is
refused at once (503 ``memory_busy`` with ``Retry-After``), and a request that alone needs
more than the budget can never run (413 ``too_much_work``).  So overload ends in refusals,
never in the kernel's OOM killer taking every request in flight with it.

The default budget is half the memory the process may use: the cgroup limit of its
container when there is one, else the machine's RAM (``default_budget_bytes``); the other
half is left to the model, the runtime and the interpreter.
"""

import asyncio
import collections
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator
from pathlib import Path

from prometheus_client import Gauge

__all__ = ["BudgetBusy", "BudgetError", "MemoryBudget", "OverBudget", "default_budget_bytes",
           "memory_limit_bytes"]

MB = 1024 * 1024
#: The share of the process's memory limit the default budget admits as request work.
DEFAULT_SHARE = 0.5
_CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
                  Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))  # cgroup v1


class BudgetError(Exception):
    """Why a request's work was not admitted."""


class BudgetBusy(BudgetError):
    """The budget is in use and a budget's worth of work is already waiting: retry later."""


class OverBudget(BudgetError):
    """This request alone needs more than the whole budget."""


def memory_limit_bytes() -> int:
    """The memory this process may use: its cgroup's limit if set and below the RAM."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in _CGROUP_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < ram:  # "max", or v1's huge "no limit"
            return int(text)
    return ram


def default_budget_bytes() -> int:
    return int(memory_limit_bytes() * DEFAULT_SHARE)


@dataclasses.dataclass(eq=False)
class _Waiter:
    nbytes: int
    future: asyncio.Future[None]


class MemoryBudget:
    """Admits reservations of estimated bytes up to ``limit``, first come first served.

    Args:
        limit: bytes of work admitted at once.
        in_use: a gauge set to the bytes reserved (optional).
    """

    def __init__(self, limit: int, in_use: Gauge | None = None) -> None:
        if limit < 1:
            raise ValueError(f"the memory budget must be positive, got {limit}")
        self.limit = limit
        self.in_use = 0
        self._gauge = in_use
        self._waiting: collections.deque[_Waiter] = collections.deque()

    @property
    def waiting_bytes(self) -> int:
        return sum(w.nbytes for w in self._waiting)

    @contextlib.asynccontextmanager
    async def reserve(self, nbytes: int, *, timeout: float) -> AsyncIterator[None]:
        """Holds ``nbytes`` of the budget for the ``async with`` body.

        Raises:
            OverBudget: ``nbytes`` exceeds the whole budget.
            BudgetBusy: no room within ``timeout`` s, or a budget's worth already waits.
        """
        await self._acquire(max(int(nbytes), 0), timeout)
        try:
            yield
        finally:
            self._release(max(int(nbytes), 0))

    async def _acquire(self, nbytes: int, timeout: float) -> None:
        if nbytes > self.limit:
            raise OverBudget(f"this request needs an estimated {nbytes / MB:.0f} MB of memory, "
                             f"more than the server's whole budget ({self.limit / MB:.0f} MB, "
                             "ATROUS_MEMORY_BUDGET_MB): use a smaller image, tiling=off, "
                             "fewer scales or no flip")
        if not self._waiting and self.in_use + nbytes <= self.limit:
            self._take(nbytes)
            return
        if self.waiting_bytes + nbytes > self.limit:
            raise BudgetBusy(f"{self.in_use / MB:.0f} of {self.limit / MB:.0f} MB of memory "
                             "are in use and as much work is already waiting")
        waiter = _Waiter(nbytes, asyncio.get_running_loop().create_future())
        self._waiting.append(waiter)
        try:
            async with asyncio.timeout(max(timeout, 0)):
                await waiter.future
        except BaseException as e:
            if waiter.future.done() and not waiter.future.cancelled():
                self._release(nbytes)  # admitted just as the wait ended: give it back
            if isinstance(e, TimeoutError):
                raise BudgetBusy(f"no memory came free within {timeout:.3g} s "
                                 f"({self.in_use / MB:.0f} of {self.limit / MB:.0f} MB in use)"
                                 ) from None
            raise
        finally:
            if waiter in self._waiting:
                self._waiting.remove(waiter)
                self._wake()

    def _take(self, nbytes: int) -> None:
        self.in_use += nbytes
        self._report()

    def _release(self, nbytes: int) -> None:
        self.in_use -= nbytes
        self._report()
        self._wake()

    def _wake(self) -> None:
        """Admits waiters in order while the first one fits (no overtaking: a big request
        is not starved by small ones)."""
        while self._waiting and self.in_use + self._waiting[0].nbytes <= self.limit:
            waiter = self._waiting.popleft()
            if waiter.future.done():
                continue
            self._take(waiter.nbytes)
            waiter.future.set_result(None)

    def _report(self) -> None:
        if self._gauge is not None:
            self._gauge.set(self.in_use)
