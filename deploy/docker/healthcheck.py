"""Container health check: exit 0 only when the server says it is ready.

The image has no curl, so Docker's ``HEALTHCHECK`` (and compose's ``healthcheck``) run this
with the image's Python. It probes readiness, not liveness: a container that is still loading
or warming up its model, or draining on shutdown, must not receive traffic.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

READINESS_PATH = "/readyz"  # docs/http-api.md
DEFAULT_PORT = "8000"  # app.settings.Settings.port


def probe(port: str, timeout_s: float = 4.0) -> tuple[bool, str]:
    """Whether ``GET http://127.0.0.1:<port>/readyz`` answered 200, and why not."""
    url = f"http://127.0.0.1:{port}{READINESS_PATH}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (fixed URL)
            return response.status == 200, f"{url} -> {response.status}"
    except urllib.error.HTTPError as e:
        return False, f"{url} -> {e.code}"
    except (OSError, ValueError) as e:
        return False, f"{url} -> {e}"


def main() -> int:
    ok, detail = probe(os.environ.get("ATROUS_PORT", DEFAULT_PORT))
    print(detail)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
