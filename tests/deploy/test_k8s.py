"""The Kubernetes manifests: kinds, probes, GPU, grace, volumes, kustomize build."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.files import (
    ENV_NAMES,
    K8S,
    ROOT,
    Dockerfile,
    default,
    go_duration_s,
    k8s_objects,
    nginx_size_bytes,
)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests


def test_k8s_manifests_have_the_required_kinds(k8s: dict[str, dict[str, Any]]) -> None:
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "ConfigMap"} <= set(k8s)
    for kind, obj in k8s.items():
        assert obj["apiVersion"] and obj["metadata"]["name"], kind


def test_deployment_requests_a_gpu_and_probes_health(container: dict[str, Any]) -> None:
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 1
    port_name = container["ports"][0]["name"]
    probes = {kind: container[kind]["httpGet"] for kind in
              ("livenessProbe", "readinessProbe", "startupProbe")}
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["startupProbe"]["path"] == "/healthz"
    for probe in probes.values():
        assert probe["port"] in (port_name, container["ports"][0]["containerPort"])
    api = (ROOT / "docs/http-api.md").read_text()
    assert "`GET /healthz`" in api and "`GET /readyz`" in api


def test_startup_window_covers_the_image_start_period(dockerfile: Dockerfile,
                                                      container: dict[str, Any]) -> None:
    startup = container["startupProbe"]
    window = startup["periodSeconds"] * startup["failureThreshold"]
    start = re.search(r"--start-period=(\S+)", dockerfile.last("HEALTHCHECK"))
    assert start and window >= go_duration_s(start[1])


def test_deployment_settings_come_from_the_configmap(k8s: dict[str, dict[str, Any]],
                                                     container: dict[str, Any]) -> None:
    (source,) = container["envFrom"]
    assert source["configMapRef"]["name"] == k8s["ConfigMap"]["metadata"]["name"]
    for env in container.get("env", []):
        assert env["name"] in ENV_NAMES or not env["name"].startswith("ATROUS_")


def test_termination_grace_outlasts_the_server(k8s: dict[str, dict[str, Any]],
                                               container: dict[str, Any]) -> None:
    data = k8s["ConfigMap"]["data"]
    grace = float(data.get("ATROUS_SHUTDOWN_GRACE_S", default("shutdown_grace_s")))
    timeout = float(data.get("ATROUS_REQUEST_TIMEOUT_S", default("request_timeout_s")))
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    spec = k8s["Deployment"]["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] > pre_stop + max(grace, timeout)


def test_deployment_mounts_the_models_volume(k8s: dict[str, dict[str, Any]],
                                             container: dict[str, Any]) -> None:
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    models = mounts["/models"]
    assert models.get("readOnly") is True
    volumes = {v["name"]: v for v in k8s["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    claim = volumes[models["name"]]["persistentVolumeClaim"]["claimName"]
    assert claim == k8s["PersistentVolumeClaim"]["metadata"]["name"]
    model = k8s["ConfigMap"]["data"].get("ATROUS_MODEL") or k8s["ConfigMap"]["data"].get(
        "ATROUS_CHECKPOINT")
    assert model and model.startswith("/models/")
    for mount in container["volumeMounts"]:
        assert mount["name"] in volumes
    # The root filesystem is read-only: every path written at run time is a volume.
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"/tmp", k8s["ConfigMap"]["data"]["ATROUS_CACHE_DIR"]} <= set(mounts)


def pod_labels(k8s: dict[str, dict[str, Any]]) -> dict[str, str]:
    labels: dict[str, str] = k8s["Deployment"]["spec"]["template"]["metadata"]["labels"]
    return labels


def test_selectors_match_the_pods(k8s: dict[str, dict[str, Any]],
                                  container: dict[str, Any]) -> None:
    labels = pod_labels(k8s).items()
    deployment_selector = k8s["Deployment"]["spec"]["selector"]["matchLabels"]
    assert deployment_selector.items() <= labels
    assert k8s["Service"]["spec"]["selector"].items() <= labels
    assert k8s["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels
    (port,) = k8s["Service"]["spec"]["ports"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    target = port["targetPort"]
    assert named.get(target, target) == default("port")


def test_hpa_scales_the_deployment(k8s: dict[str, dict[str, Any]],
                                   container: dict[str, Any]) -> None:
    spec = k8s["HorizontalPodAutoscaler"]["spec"]
    target = spec["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", k8s["Deployment"]["metadata"]["name"])
    assert 1 <= spec["minReplicas"] <= spec["maxReplicas"]
    # A CPU utilisation target means nothing without a CPU request.
    if any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in spec["metrics"]):
        assert container["resources"]["requests"]["cpu"]
    # The HPA owns the replica count: a fixed one would fight it on every apply.
    assert "replicas" not in k8s["Deployment"]["spec"]
    pdb = k8s["PodDisruptionBudget"]["spec"]
    assert "maxUnavailable" in pdb or pdb["minAvailable"] < spec["minReplicas"]


def test_ingress_limits_match_the_server(k8s: dict[str, dict[str, Any]]) -> None:
    ingress = k8s["Ingress"]
    notes = ingress["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert nginx_size_bytes(notes[prefix + "proxy-body-size"]) == default("max_upload_bytes")
    assert float(notes[prefix + "proxy-read-timeout"]) > default("request_timeout_s")
    assert notes[prefix + "proxy-request-buffering"] == "on"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == k8s["Service"]["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in k8s["Service"]["spec"]["ports"]}


def test_kustomize_builds(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not installed here; the YAML checks above still ran")
    result = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    kinds = {doc["kind"] for doc in yaml.safe_load_all(result.stdout) if doc}
    assert kinds == set(k8s_objects())


