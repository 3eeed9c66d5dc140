"""deploy/ray: the KubeRay RayJob runs a real `atrous segment-dataset` command line, on the
image deploy/ray/Dockerfile builds, with the Ray version pyproject pins, and its resources
fit what the command asks for (no cluster here: the files are checked against each other)."""

from __future__ import annotations

import re
import shlex
import tomllib
from typing import Any

import pytest
import yaml

from app.cli.main import build_parser
from tests.deploy.files import DEPLOY, K8S, ROOT

RAY = DEPLOY / "ray"


@pytest.fixture(scope="module")
def job() -> dict[str, Any]:
    (document,) = list(yaml.safe_load_all((RAY / "rayjob.yaml").read_text()))
    return document


def _groups(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cluster = job["spec"]["rayClusterSpec"]
    return {"head": cluster["headGroupSpec"],
            **{group["groupName"]: group for group in cluster["workerGroupSpecs"]}}


def _container(group: dict[str, Any]) -> dict[str, Any]:
    (container,) = group["template"]["spec"]["containers"]
    return container


def _ray_pin() -> str:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    (pin,) = extras["ray"]
    assert "atrous[ray]" in extras["dev"]
    return pin


def test_the_job_runs_a_valid_segment_dataset_command(job: dict[str, Any]) -> None:
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["atrous", "segment-dataset"]
    args = build_parser().parse_args(argv[1:])
    assert args.engine == "ray" and args.resume  # a rerun continues, never starts over
    assert args.address is None  # the driver runs on the head: Ray finds its own cluster
    for name, group in _groups(job).items():
        mounts = {m["name"]: m["mountPath"] for m in _container(group)["volumeMounts"]}
        assert str(args.model).startswith(mounts["models"] + "/"), name
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                  for v in group["template"]["spec"]["volumes"]}
        assert claims["models"] == yaml.safe_load((K8S / "pvc.yaml").read_text())[
            "metadata"]["name"]


def test_gpu_and_cpu_worker_groups_fit_the_command(job: dict[str, Any]) -> None:
    args = build_parser().parse_args(shlex.split(job["spec"]["entrypoint"])[1:])
    groups = _groups(job)
    assert {"head", "gpu", "cpu"} <= set(groups)
    gpu = groups["gpu"]
    gpus_per_pod = int(gpu["rayStartParams"]["num-gpus"])
    limits = _container(gpu)["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) == gpus_per_pod
    # Every actor gets its GPUs at the cluster's planned size, or the job would wait forever.
    assert args.workers * args.gpus_per_worker <= gpu["replicas"] * gpus_per_pod
    assert "nvidia.com/gpu" not in _container(groups["cpu"])["resources"]["limits"]
    assert groups["head"]["rayStartParams"]["num-cpus"] == "0"  # no model actor on the head


def test_every_node_runs_the_ray_image_as_the_atrous_user(job: dict[str, Any]) -> None:
    pin = _ray_pin()
    version = re.fullmatch(r"ray\[data\]==(\d+\.\d+)\.\*", pin)
    assert version, pin
    assert job["spec"]["rayClusterSpec"]["rayVersion"].startswith(version[1] + ".")
    dockerfile = (RAY / "Dockerfile").read_text()
    assert f'"{pin}"' in dockerfile
    tag = re.search(r"docker build -t (\S+) -f deploy/ray/Dockerfile", dockerfile)
    assert tag
    user = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.MULTILINE)
    assert user
    for name, group in _groups(job).items():
        assert _container(group)["image"] == tag[1], name
        context = group["template"]["spec"]["securityContext"]
        assert (str(context["runAsUser"]), str(context["runAsGroup"])) == user.groups(), name


def test_docs_show_how_to_run_the_job() -> None:
    text = (ROOT / "docs/batch.md").read_text()
    assert "kubectl apply -f deploy/ray/rayjob.yaml" in text
    assert "docker build -t atrous-ray:0.1.0 -f deploy/ray/Dockerfile ." in text
