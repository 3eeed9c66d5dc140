"""The API keys as deployed: the k8s Secret the pods read, and the compose settings list."""

from pathlib import Path

import pytest
import yaml

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy/k8s"


def manifest(name: str) -> dict:
    loaded: dict = yaml.safe_load((K8S / name).read_text())
    return loaded


def test_the_deployment_reads_the_keys_from_the_secret_that_kustomize_applies(monkeypatch):
    secret = manifest("secret.yaml")
    assert secret["kind"] == "Secret"
    assert "secret.yaml" in manifest("kustomization.yaml")["resources"]
    (container,) = manifest("deployment.yaml")["spec"]["template"]["spec"]["containers"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})}
    ref = refs["ATROUS_API_KEYS"]
    assert ref["name"] == secret["metadata"]["name"]
    assert ref["key"] in secret["stringData"]
    assert ref.get("optional") is True  # a cluster without the Secret still starts the pods
    # As shipped the Secret holds no key, and that validates as "no access control".
    for name in Settings.model_fields:
        monkeypatch.delenv(f"ATROUS_{name.upper()}", raising=False)
    monkeypatch.setenv("ATROUS_API_KEYS", secret["stringData"][ref["key"]])
    assert Settings().accepted_api_keys == ()


@pytest.mark.parametrize("name", ["ATROUS_API_KEYS", "ATROUS_API_KEYS_FILE",
                                  "ATROUS_METRICS_PUBLIC"])
def test_the_docs_say_how_to_set_the_keys(name):
    for doc in ("docs/deploy.md", "docs/server.md", "README.md"):
        assert name in (ROOT / doc).read_text(), (doc, name)
