"""The README and the code must not drift: commands, subcommands and settings."""

import re
from pathlib import Path

from app.cli.main import build_parser
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_ci_runs_exactly_the_readme_test_command():
    command = ("pip install -e '.[dev]' -e ./client && ruff check . "
               "&& mypy app model client benchmarks && python -m pytest")
    assert f"\n{command}\n" in README
    assert f"\n{command}\n" in (ROOT / ".ci/run").read_text()


def test_readme_documents_every_setting():
    for name in Settings.model_fields:
        env = f"ATROUS_{name.upper()}"
        assert env in README or f"`_{name.upper()}`" in README, f"{env} is not in README.md"


def test_readme_command_table_names_real_subcommands():
    documented = set(re.findall(r"^\| `atrous ([a-z-]+)", README, re.MULTILINE))
    commands = build_parser()._subparsers._group_actions[0].choices
    assert documented == set(commands)
