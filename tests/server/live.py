"""For tests against a real server process: its metrics, and a request held in flight."""

import threading
import time

import httpx

# The one model of ATROUS_MODEL is version 1 of "default": its series carry these labels
# (the exposition sorts label names).
VERSION_LABELS = 'model="default",version="1"'


def metric(url: str, name: str) -> float:
    """One sample of ``/metrics`` (the node's, with several workers); 0 when absent."""
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def admitted_request(url: str, body: bytes, *,
                     timeout: float = 30.0) -> tuple[threading.Thread, dict[str, object]]:
    """POSTs ``body`` to ``/segment`` in a thread and returns once the image waits in a
    batcher (queue depth 1): admitted, so a drain begun now must finish it.  Counted on
    arrival only, a slow start under a loaded suite could still meet the drain first.

    Returns the thread and what it fills: ``response`` or ``error``.
    """
    outcome: dict[str, object] = {}

    def post() -> None:
        try:
            outcome["response"] = httpx.post(url + "/segment", content=body, timeout=timeout)
        except Exception as e:  # noqa: BLE001 - the caller asserts on it
            outcome["error"] = e

    thread = threading.Thread(target=post)
    thread.start()
    deadline = time.monotonic() + timeout
    while metric(url, f"atrous_queue_depth{{{VERSION_LABELS}}}") < 1:
        assert time.monotonic() < deadline and "error" not in outcome, outcome
        time.sleep(0.02)
    return thread, outcome


def response_of(thread: threading.Thread, outcome: dict[str, object],
                timeout: float = 30.0) -> httpx.Response:
    """The answer to ``admitted_request`` (it must have come, not an error)."""
    thread.join(timeout)
    assert "error" not in outcome, outcome
    response = outcome.get("response")
    assert isinstance(response, httpx.Response), outcome
    return response
