"""Fixtures of the deploy tests: the parsed Dockerfile, Kubernetes objects and nginx config."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.files import (
    NGINX,
    ROOT,
    Dockerfile,
    k8s_objects,
    nginx_directives,
)


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return Dockerfile(ROOT / "Dockerfile")


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    return k8s_objects()


@pytest.fixture(scope="module")
def container(k8s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (only,) = k8s["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


@pytest.fixture(scope="module")
def nginx_conf() -> dict[str, list[list[str]]]:
    return nginx_directives((NGINX / "nginx.conf").read_text())


