"""The SDK's public surface and packaging: changing them must be a deliberate act."""

import subprocess
import sys
import tomllib
from pathlib import Path

import atrous_client

CLIENT_DIR = Path(__file__).resolve().parents[2] / "client"

PUBLIC_NAMES = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncAtrousClient",
    "AtrousClient",
    "AtrousError",
    "AuthenticationError",
    "BadRequestError",
    "ClassInfo",
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT",
    "Format",
    "GatewayTimeoutError",
    "ImageInput",
    "InternalServerError",
    "ModelClass",
    "ModelInfo",
    "PayloadTooLargeError",
    "SegmentOptions",
    "Segmentation",
    "ServiceUnavailableError",
    "Tiling",
    "UnprocessableEntityError",
    "UnsupportedMediaTypeError",
    "VOC_PALETTE",
    "__version__",
]


def test_all_is_locked() -> None:
    assert sorted(atrous_client.__all__) == PUBLIC_NAMES
    assert len(set(atrous_client.__all__)) == len(atrous_client.__all__)


def test_every_exported_name_exists_and_classes_say_where_they_live() -> None:
    for name in atrous_client.__all__:
        member = getattr(atrous_client, name)
        if isinstance(member, type):
            # Reprs and tracebacks name the public module, not the private one.
            assert member.__module__ == "atrous_client", name


def test_nothing_public_is_left_out_of_all() -> None:
    public = {name for name in vars(atrous_client) if not name.startswith("_")}
    assert public <= set(atrous_client.__all__), public - set(atrous_client.__all__)


def test_import_pulls_in_neither_tensorflow_nor_the_server() -> None:
    code = ("import sys, atrous_client\n"
            "heavy = sorted(m for m in sys.modules\n"
            "               if m.split('.')[0] in {'tensorflow', 'tf_slim', 'keras', 'model',\n"
            "                                      'app', 'fastapi', 'tqdm'})\n"
            "print(','.join(heavy))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=CLIENT_DIR)
    assert out.stdout.strip() == ""


def test_distribution_metadata() -> None:
    project = tomllib.loads((CLIENT_DIR / "pyproject.toml").read_text())["project"]
    assert project["name"] == "atrous-client"
    dependencies = sorted(d.split(">")[0].split("=")[0].split("<")[0].lower()
                          for d in project["dependencies"])
    assert dependencies == ["httpx", "numpy", "pillow"]
    assert (CLIENT_DIR / "atrous_client" / "py.typed").is_file()
    assert (CLIENT_DIR / "README.md").is_file()
    assert atrous_client.__version__.count(".") == 2
