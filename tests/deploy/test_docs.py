"""docs/deploy.md and the deploy files name real things."""

from __future__ import annotations

import re

from tests.deploy.files import (
    DOCS,
    K8S,
    ROOT,
    default,
)


def test_metric_names_in_deploy_files_exist() -> None:
    source = (ROOT / "app/metrics.py").read_text()
    texts = [DOCS.read_text(), *(p.read_text() for p in K8S.glob("*.yaml"))]
    named = {m for text in texts for m in re.findall(r"\batrous_[a-z_]+\b", text)}
    assert named, "no metric named: the HPA notes point at one"
    for metric in named:
        assert f'"{metric}"' in source, f"{metric} is not a metric in app/metrics.py"


def test_docs_name_real_files_and_commands() -> None:
    text = DOCS.read_text()
    for path in set(re.findall(r"(?<![\w/.])((?:deploy|docs)/[\w./-]+\w)", text)):
        if path == "deploy/.env":  # the reader makes it from deploy/.env.example
            continue
        assert (ROOT / path).exists(), f"docs/deploy.md names {path}, which does not exist"
    assert "docker compose -f deploy/docker-compose.yml up -d" in text
    assert ("docker compose -f deploy/docker-compose.yml -f deploy/docker-compose.multi-gpu.yml"
            in text)
    assert "kubectl apply -k deploy/k8s" in text
    # A bare `docker run` must give the container longer than the server's drain.
    commands = re.sub(r"\\\n\s*", " ", text).splitlines()
    runs = [line for line in commands if line.lstrip().startswith("docker run -d ")]
    assert runs, "docs/deploy.md shows no long-running docker run command"
    server_s = max(default("shutdown_grace_s"), default("request_timeout_s"))
    for run in runs:
        stop = re.search(r"--stop-timeout[ =](\d+)", run)
        assert stop and int(stop[1]) > server_s, run
        assert "--gpus" in run or "cpu" in run
