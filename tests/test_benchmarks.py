"""The benchmarks' own promises that can drift from the project."""

import re
import tomllib
from pathlib import Path

from benchmarks import device_bundle

ROOT = Path(__file__).resolve().parents[1]
# Not needed to serve an ONNX export on the GPU machine, or already installed there.
NOT_CARRIED = {"tensorflow", "tf-keras", "tf-slim", "openvino", "numpy", "tqdm", "httpx"}


def test_the_device_bundle_carries_every_server_dependency() -> None:
    """A dependency added to pyproject but not to the bundle would make the device run fail
    at import, after minutes of the device's budget spent starting it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    carried = set(device_bundle.SERVER)
    for requirement in project["dependencies"]:
        name = re.split(r"[\[<>=~ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        if name not in NOT_CARRIED:
            assert name in carried, f"{name} is a server dependency the bundle leaves out"
    # uvicorn[standard]: without them it would serve on asyncio's loop and h11, slower.
    assert {"uvloop", "httptools"} <= carried
