"""The SDK's public surface and packaging: changing them must be a deliberate act."""

import shutil
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
    "ModelStatus",
    "ModelVersion",
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


def test_building_the_sdk_leaves_the_type_check_clean(tmp_path: Path) -> None:
    # `pip install ./client` (the README's way to install the SDK alone) builds in the source
    # tree and leaves client/build/lib/atrous_client: a second copy of the package, which made
    # the README's `mypy app model client` stop at "Duplicate module named atrous_client".
    # Build a copy of the SDK the same way, then type-check it with the project's mypy config.
    root = CLIENT_DIR.parent
    shutil.copytree(CLIENT_DIR, tmp_path / "client",
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    shutil.copy(root / "pyproject.toml", tmp_path / "pyproject.toml")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(tmp_path / "dist"), "./client"],
                   cwd=tmp_path, check=True, capture_output=True)
    assert (tmp_path / "client" / "build" / "lib" / "atrous_client" / "_client.py").is_file()
    # --no-site-packages: third-party stubs are beside the point and take ~10 s to read cold.
    check = subprocess.run([sys.executable, "-m", "mypy", "--no-site-packages", "--cache-dir",
                            str(tmp_path / ".mypy_cache"), "client"],
                           cwd=tmp_path, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # Every module of the package once, none from build/.
    modules = len(list((tmp_path / "client" / "atrous_client").glob("*.py")))
    assert f"no issues found in {modules} source files" in check.stdout, check.stdout
