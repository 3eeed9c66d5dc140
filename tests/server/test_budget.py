"""The memory budget (app/budget.py): admits up to its limit, queues first come first
served, refuses at once when a budget's worth already waits, and never leaks a reservation."""

import asyncio

import pytest
from prometheus_client import CollectorRegistry, Gauge

from app.budget import BudgetBusy, MemoryBudget, OverBudget, memory_limit_bytes


def run(coroutine):
    return asyncio.run(coroutine)


def test_work_beyond_the_budget_waits_in_order_and_the_excess_is_refused():
    gauge = Gauge("in_use", "bytes", registry=CollectorRegistry())

    async def main():
        budget = MemoryBudget(100, gauge)
        order: list[str] = []
        release = asyncio.Event()

        async def work(name: str, nbytes: int) -> None:
            async with budget.reserve(nbytes, timeout=5):
                order.append(name)
                await release.wait()

        first = asyncio.create_task(work("a", 60))
        await asyncio.sleep(0)
        waiting = [asyncio.create_task(work("b", 60)), asyncio.create_task(work("c", 30))]
        await asyncio.sleep(0.01)
        assert order == ["a"] and budget.in_use == 60 and gauge._value.get() == 60
        # c would fit beside a, but b came first: no overtaking, so a big one is not starved.
        with pytest.raises(BudgetBusy, match="already waiting"):
            await work("d", 20)  # 90 waiting + 20 > 100
        with pytest.raises(OverBudget, match="whole budget"):
            await work("e", 101)
        release.set()
        await asyncio.gather(first, *waiting)
        return order, budget.in_use, gauge._value.get()

    order, in_use, gauge_value = run(main())
    assert order == ["a", "b", "c"]
    assert in_use == 0 and gauge_value == 0


def test_a_wait_that_times_out_or_is_cancelled_gives_nothing_away():
    async def main():
        budget = MemoryBudget(10)
        async with budget.reserve(10, timeout=1):
            with pytest.raises(BudgetBusy, match="no memory came free"):
                async with budget.reserve(5, timeout=0.01):
                    pass
            task = asyncio.create_task(budget.reserve(5, timeout=5).__aenter__())
            await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert budget.waiting_bytes == 0
        return budget.in_use

    assert run(main()) == 0


def test_the_default_limit_is_the_machine_or_cgroup_memory(tmp_path, monkeypatch):
    import os

    from app import budget

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    v2, v1 = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    monkeypatch.setattr(budget, "_CGROUP_LIMITS", (v2, v1))
    assert memory_limit_bytes() == ram  # no cgroup files: the machine's memory
    v2.write_text("max\n")
    v1.write_text(f"{1 << 62}\n")  # v1's "no limit": above the RAM
    assert memory_limit_bytes() == ram
    v1.write_text("2147483648\n")
    assert memory_limit_bytes() == 2 << 30  # a container's limit
    v2.write_text("1073741824\n")
    assert memory_limit_bytes() == 1 << 30  # v2 read first
