"""ATROUS_* settings and the deploy files agree: .env.example, the ConfigMap."""

from __future__ import annotations

import re
from typing import Any

import pytest

from app.settings import Settings
from tests.deploy.files import (
    DEFAULTS,
    DEPLOY,
    ENV_NAME,
    ENV_NAMES,
    ROOT,
    default,
)


def test_env_example_lists_every_setting_with_its_default() -> None:
    listed: dict[str, str] = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        match = re.fullmatch(r"#?\s*(ATROUS_[A-Z0-9_]+)=(.*)", line.strip())
        if match:
            assert match[1] not in listed, f"{match[1]} listed twice"
            listed[match[1]] = match[2]
    assert set(listed) == ENV_NAMES, (
        f"missing: {sorted(ENV_NAMES - set(listed))}; unknown: {sorted(set(listed) - ENV_NAMES)}")
    for field in DEFAULTS:
        if DEFAULTS[field].default_factory is not None:  # per device: max_batch_size
            Settings(**{field: listed[f"ATROUS_{field.upper()}"]})  # still a valid value
            continue
        value = default(field)
        expected = "" if value is None else str(value)
        if isinstance(value, bool):
            expected = expected.lower()
        assert listed[f"ATROUS_{field.upper()}"] == expected, field


def test_env_example_changes_nothing_until_edited() -> None:
    # Copied as-is to deploy/.env it must not override anything (ATROUS_HOST=127.0.0.1 would
    # make the container unreachable), so every setting line is a comment.
    active = [line for line in (DEPLOY / ".env.example").read_text().splitlines()
              if line.strip() and not line.lstrip().startswith("#")]
    assert active == []


DEPLOY_TEXTS = ["Dockerfile", ".dockerignore", "deploy", "docs/deploy.md"]


def test_every_atrous_name_is_a_setting() -> None:
    files = [f for p in DEPLOY_TEXTS for f in
             ((ROOT / p).rglob("*") if (ROOT / p).is_dir() else [ROOT / p]) if f.is_file()]
    files.append(DEPLOY / ".env.example")
    used_by_file = {f.relative_to(ROOT).as_posix(): set(ENV_NAME.findall(f.read_text()))
                    for f in files if "__pycache__" not in f.parts}
    for path in ("Dockerfile", "deploy/.env.example", "deploy/k8s/configmap.yaml",
                 "deploy/atrous-service.yml"):
        assert used_by_file[path], f"{path} names no ATROUS_* setting: is the pattern broken?"
    for path, used in used_by_file.items():
        assert used <= ENV_NAMES, f"{path}: not in app/settings.py: {sorted(used - ENV_NAMES)}"


def test_configmap_keys_are_settings_and_validate(
        k8s: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    data = k8s["ConfigMap"]["data"]
    assert set(data) <= ENV_NAMES, sorted(set(data) - ENV_NAMES)
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    # The model path only exists in the pod; every other value must pass Settings' validation.
    for name, value in data.items():
        if name not in ("ATROUS_MODEL", "ATROUS_CHECKPOINT"):
            monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.host == "0.0.0.0"


