"""The layout holds the architecture: imports only point down, and the inference wing
(what the server's request path runs) never reaches tf-slim or the graph builders.

Checked on the source (every import statement, function-local ones included), so a new
file is held to the rule the day it is added.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def reaches(names: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes))


GRAPH_SIDE = ("tf_slim", "model.nets", "model.export", "model.checkpoints", "model.weights",
              "model.bench", "model.train")


@pytest.mark.parametrize("path", modules("model/inference"), ids=lambda p: p.name)
def test_the_inference_wing_never_imports_the_graph_side(path: Path) -> None:
    assert not reaches(imports(path), GRAPH_SIDE)


@pytest.mark.parametrize("path", modules("model/inference"), ids=lambda p: p.name)
def test_tensorflow_is_imported_only_inside_runtimes(path: Path) -> None:
    if "runtimes" in path.parts:
        return
    assert not reaches(imports(path), ("tensorflow", "keras", "tf_keras"))


@pytest.mark.parametrize("path", modules("model"), ids=lambda p: str(p.relative_to(ROOT)))
def test_model_never_imports_app_or_the_client(path: Path) -> None:
    assert not reaches(imports(path), ("app", "atrous_client"))


# The server: app/ but the CLI. Start-up code may reach the export side (a checkpoint is
# checked, then exported once); nothing else may.  model.atomic (standard-library file
# writes, which the inference wing's own metadata writer uses) is open to all of it.
SERVER = [p for p in modules("app") if "cli" not in p.parts]
START_UP = {"loader.py": ("model.export", "model.checkpoints"),  # a RUN's recorded network
            "settings.py": ("model.checkpoints",)}


@pytest.mark.parametrize("path", SERVER, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_server_uses_only_the_inference_wing_and_the_config(path: Path) -> None:
    allowed = ("model.inference", "model.config", "model.atomic", *START_UP.get(path.name, ()))
    model_imports = reaches(imports(path), ("model",))
    assert [n for n in model_imports if not reaches({n}, allowed)] == []
    assert not reaches(imports(path), ("tensorflow", "tf_slim"))
