"""The Dockerfile: pinned bases, non-root user, what it copies and installs, health check."""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from tests.deploy.files import (
    COMPOSE_FILES,
    DEPLOY,
    NGINX,
    ROOT,
    Dockerfile,
    compose,
    default,
    dockerignored,
    go_duration_s,
    load_module,
    nginx_upstream_servers,
    pyproject,
)


def test_dockerfile_bases_are_pinned_official_tensorflow(dockerfile: Dockerfile) -> None:
    stage_names = {name for _, name in dockerfile.stages() if name}
    external = [image for image, _ in dockerfile.stages() if image not in stage_names]
    assert external, "no base image"
    for image in external:
        repo, _, tag = image.partition(":")
        assert repo == "tensorflow/tensorflow", image
        assert tag and "latest" not in tag and "nightly" not in tag, f"unpinned base {image}"
    tags = {image.partition(":")[2] for image in external}
    version = dockerfile.args["TF_VERSION"]
    assert tags == {f"{version}-gpu", version}, "need the GPU and the CPU image of one version"
    # pyproject pins tensorflow==2.21.*: the image's TF must be that release.
    (pin,) = [d for d in pyproject()["project"]["dependencies"] if d.startswith("tensorflow==")]
    assert re.fullmatch(re.escape(pin.removeprefix("tensorflow==")).replace(r"\*", r"\d+"),
                        version), (pin, version)


@pytest.mark.parametrize(("device", "suffix"), [("gpu", "-gpu"), ("cpu", "")])
def test_device_build_arg_selects_the_base(dockerfile: Dockerfile, device: str,
                                           suffix: str) -> None:
    stages = dockerfile.stages(DEVICE=device)
    by_name = {name: image for image, name in stages if name}
    final_image = stages[-1][0]
    assert by_name[final_image] == f"tensorflow/tensorflow:{dockerfile.args['TF_VERSION']}{suffix}"


def test_default_build_is_the_gpu_image(dockerfile: Dockerfile) -> None:
    assert dockerfile.args["DEVICE"] == "gpu"
    for name in COMPOSE_FILES:
        for service in compose(name)["services"].values():
            if "build" in service:
                assert service["build"]["args"]["DEVICE"] == "gpu"


def test_dockerfile_runs_as_a_numeric_non_root_user(dockerfile: Dockerfile,
                                                    k8s: dict[str, dict[str, Any]]) -> None:
    user, _, group = dockerfile.last("USER").partition(":")
    assert user.isdigit() and int(user) != 0, "USER must be a numeric non-root uid (runAsNonRoot)"
    created = " ".join(dockerfile.all("RUN"))
    assert re.search(rf"useradd\b[^&]*--uid {user}\b", created), f"uid {user} is never created"
    pod = k8s["Deployment"]["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert str(pod["runAsUser"]) == user and str(pod["runAsGroup"]) == (group or user)
    # The USER comes after every RUN that installs things (those need root).
    order = [kw for kw, _ in dockerfile.instructions]
    assert max(i for i, kw in enumerate(order) if kw == "RUN") < order.index("USER")


def test_dockerfile_copies_exist_and_survive_dockerignore(dockerfile: Dockerfile) -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    sources = [src for srcs, _ in dockerfile.copies() for src in srcs]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        files = [p for p in (ROOT / source).rglob("*") if p.is_file()] \
            if (ROOT / source).is_dir() else [ROOT / source]
        for f in files:
            rel = f.relative_to(ROOT).as_posix()
            if "__pycache__" not in rel:
                assert not dockerignored(rel, patterns), f"{rel} is copied but dockerignored"
    # And the context leaves out what must never reach an image.
    for unwanted in (".git/config", "deploy/.env", "deploy/models/x.ckpt", ".venv/bin/python",
                     "tests/test_deploy.py"):
        assert dockerignored(unwanted, patterns), unwanted


def top_level_packages(project: dict[str, Any]) -> set[str]:
    """Top-level packages the wheel holds: an explicit list or ``packages.find`` includes."""
    packages = project["tool"]["setuptools"]["packages"]
    names = packages["find"]["include"] if isinstance(packages, dict) else packages
    return {name.split(".")[0] for name in names}


def test_dockerfile_installs_what_pyproject_packages(dockerfile: Dockerfile) -> None:
    project = pyproject()
    copied = {PurePosixPath(src).parts[0] for srcs, _ in dockerfile.copies() for src in srcs}
    for package in top_level_packages(project):
        assert package in copied, f"package {package} is not copied into the image"
    readme = project["project"].get("readme")
    if isinstance(readme, str):
        assert readme in copied, f"pyproject's readme {readme} is needed to build the wheel"
    # Dependencies (cached layer) before sources, so code edits do not reinstall them.
    order = [(kw, rest) for kw, rest in dockerfile.instructions if kw in ("COPY", "RUN")]
    first_source = next(i for i, (kw, rest) in enumerate(order)
                        if kw == "COPY" and rest.split()[0].rstrip("/") in ("model", "app"))
    dep_install = next(i for i, (kw, rest) in enumerate(order)
                       if kw == "RUN" and "pip install" in rest)
    assert dep_install < first_source


def test_wheel_includes_every_subpackage(dockerfile: Dockerfile) -> None:
    # The image runs the installed wheel, not the source tree: a subpackage that setuptools
    # leaves out (an explicit `packages` list without it) is missing in the container.
    packages = pyproject()["tool"]["setuptools"]["packages"]
    if isinstance(packages, dict):  # packages.find discovers subpackages itself
        return
    copied = {PurePosixPath(src).parts[0] for srcs, _ in dockerfile.copies() for src in srcs}
    for top in copied & {p.split(".")[0] for p in packages}:
        found = {init.parent.relative_to(ROOT).as_posix().replace("/", ".")
                 for init in (ROOT / top).rglob("__init__.py")}
        assert found <= set(packages), (
            f"pyproject [tool.setuptools] packages leaves out {sorted(found - set(packages))}; "
            "use [tool.setuptools.packages.find] or list them")


def test_dockerfile_keeps_the_base_tensorflow(dockerfile: Dockerfile) -> None:
    installs = [rest for rest in dockerfile.all("RUN") if "pip install" in rest]
    assert installs
    for rest in installs:
        # Either constrained by the frozen TF stack, or no dependency resolution at all.
        assert "-c /opt/atrous/tf-pins.txt" in rest or "--no-deps" in rest, rest
        assert "tf_pins.py check" in rest, "every install must prove TF was left alone"
        assert "--upgrade" not in rest and " -U " not in rest


def test_cmd_runs_the_console_script(dockerfile: Dockerfile) -> None:
    cmd = json.loads(dockerfile.last("CMD"))
    scripts = pyproject()["project"]["scripts"]
    assert cmd[0] in scripts, f"CMD runs {cmd[0]}, not a [project.scripts] entry"
    module = scripts[cmd[0]].partition(":")[0]
    path = ROOT / (module.replace(".", "/") + ".py")
    assert path.is_file(), f"{cmd[0]} = {scripts[cmd[0]]}, but {path.relative_to(ROOT)} is missing"
    assert "serve" in cmd[1:]
    assert "--workers" not in cmd, "the workers per container come from ATROUS_WORKERS"
    assert dockerfile.last("STOPSIGNAL") == "SIGTERM"


def test_an_init_is_pid_1(dockerfile: Dockerfile) -> None:
    """tini reaps what a killed worker leaves behind (the supervisor reaps only its own
    workers) and passes SIGTERM to the server alone: the supervisor drains in its own order
    (every worker unready first, then each one stopped); -g would signal them behind it."""
    assert any("apt-get install" in rest and " tini" in rest for rest in dockerfile.all("RUN"))
    assert json.loads(dockerfile.last("ENTRYPOINT")) == ["tini", "--"]


def test_healthcheck_probes_readiness(dockerfile: Dockerfile) -> None:
    healthcheck = dockerfile.last("HEALTHCHECK")
    options, _, cmd = healthcheck.partition("CMD")
    command = json.loads(cmd)
    script = command[-1]
    copied_to = {dest.rstrip("/") + "/" + Path(src).name for srcs, dest in dockerfile.copies()
                 for src in srcs}
    assert script in copied_to, f"HEALTHCHECK runs {script}, which is never copied in"
    module = load_module(DEPLOY / "docker" / Path(script).name)
    assert module.READINESS_PATH == "/readyz"
    assert "`GET /readyz`" in (ROOT / "docs/http-api.md").read_text()
    assert module.DEFAULT_PORT == str(default("port"))
    start = re.search(r"--start-period=(\S+)", options)
    assert start and go_duration_s(start[1]) >= 120, "start period must cover load + warm-up"


def test_one_port_everywhere(dockerfile: Dockerfile, k8s: dict[str, dict[str, Any]],
                             container: dict[str, Any]) -> None:
    port = int(dockerfile.last("EXPOSE"))
    assert port == default("port")
    assert dockerfile.env()["ATROUS_PORT"] == str(port)
    assert dockerfile.env()["ATROUS_HOST"] == "0.0.0.0"
    service = compose("atrous-service.yml")["services"]["atrous"]
    assert service["expose"] == [str(port)]
    assert service["environment"]["ATROUS_PORT"] == str(port)
    assert service["environment"]["ATROUS_HOST"] == "0.0.0.0"
    for conf in ("upstream.conf", "upstream.multi-gpu.conf"):
        assert {p for _, p in nginx_upstream_servers(NGINX / conf)} == {port}, conf
    (container_port,) = container["ports"]
    assert container_port["containerPort"] == port
    assert k8s["ConfigMap"]["data"]["ATROUS_PORT"] == str(port)
    annotations = k8s["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)


def test_cache_dir_is_writable_and_mounted(dockerfile: Dockerfile, k8s: dict[str, dict[str, Any]],
                                           container: dict[str, Any]) -> None:
    cache = dockerfile.env()["ATROUS_CACHE_DIR"]
    user = dockerfile.last("USER")
    assert re.search(rf"chown {re.escape(user)} {re.escape(cache)}\b",
                     " ".join(dockerfile.all("RUN"))), "cache dir not owned by the runtime user"
    service = compose("atrous-service.yml")["services"]["atrous"]
    assert service["environment"]["ATROUS_CACHE_DIR"] == cache
    assert cache in {v["target"] for v in service["volumes"]}
    assert k8s["ConfigMap"]["data"]["ATROUS_CACHE_DIR"] == cache
    assert cache in {m["mountPath"] for m in container["volumeMounts"]}


