# atrous: DeepLab-style segmentation server (FastAPI + TensorFlow), ATROUS_WORKERS processes.
#
#   docker build -t atrous:0.1.0 .                          # GPU image (default)
#   docker build -t atrous:0.1.0-cpu --build-arg DEVICE=cpu .  # CPU-only image
#
# See docs/deploy.md for running it (compose, Kubernetes, mounting a model).

# The TensorFlow version must match pyproject.toml (`tensorflow==2.21.*`); tests check it.
ARG TF_VERSION=2.21.0
# gpu: tensorflow/tensorflow:<v>-gpu (CUDA + cuDNN); cpu: tensorflow/tensorflow:<v>.
ARG DEVICE=gpu

# Both official bases are named; BuildKit only pulls the one `DEVICE` selects.
FROM tensorflow/tensorflow:${TF_VERSION}-gpu AS base-gpu
FROM tensorflow/tensorflow:${TF_VERSION} AS base-cpu

FROM base-${DEVICE} AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it (deploy/k8s uses the same).
RUN groupadd --system --gid 10001 atrous \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/atrous \
        --shell /usr/sbin/nologin atrous \
 && mkdir -p /models /var/cache/atrous \
 && chown 10001:10001 /var/cache/atrous

# tini as PID 1 (ENTRYPOINT below): it forwards the stop signal to the server and reaps what
# a killed worker leaves behind; the server's supervisor reaps only its own workers.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/atrous

# --- Dependency layer: changes only when pyproject.toml does. ---
# The base image's TensorFlow is the build that matches its CUDA libraries. `tf_pins.py freeze`
# writes that stack (tensorflow, numpy, protobuf, nvidia-* ...) as pip constraints, so pip keeps
# it (`tensorflow==2.21.*` is already satisfied) or fails the build, and never downloads another
# TensorFlow over it; `check` proves afterwards that nothing in it moved. The image's Python is
# the system one TensorFlow was installed into (a venv would hide it), hence
# PIP_BREAK_SYSTEM_PACKAGES for bases whose Python is marked externally managed (PEP 668).
COPY deploy/docker/tf_pins.py deploy/docker/healthcheck.py /opt/atrous/bin/
COPY pyproject.toml README.md /opt/atrous/
RUN python /opt/atrous/bin/tf_pins.py freeze > /opt/atrous/tf-pins.txt \
 && python /opt/atrous/bin/tf_pins.py requirements pyproject.toml > /tmp/requirements.txt \
 && PIP_BREAK_SYSTEM_PACKAGES=1 python -m pip install \
        -c /opt/atrous/tf-pins.txt -r /tmp/requirements.txt \
 && python /opt/atrous/bin/tf_pins.py check /opt/atrous/tf-pins.txt \
 && rm /tmp/requirements.txt

# --- Source layer. ---
COPY model/ /opt/atrous/model/
COPY app/ /opt/atrous/app/
# --no-deps: everything was installed above; this only adds the packages and the `atrous` script.
RUN PIP_BREAK_SYSTEM_PACKAGES=1 python -m pip install --no-deps /opt/atrous \
 && python /opt/atrous/bin/tf_pins.py check /opt/atrous/tf-pins.txt \
 && python -c "import app.settings, model.config"

# Serve whatever is mounted at /models: ATROUS_MODEL=/models/<savedmodel> or
# ATROUS_CHECKPOINT=/models/<checkpoint>. A checkpoint is exported at start into
# ATROUS_CACHE_DIR, which must be writable by the non-root user: mount a volume there to keep
# the export across restarts.
ENV ATROUS_HOST=0.0.0.0 \
    ATROUS_PORT=8000 \
    ATROUS_CACHE_DIR=/var/cache/atrous

USER 10001:10001
WORKDIR /home/atrous
EXPOSE 8000

# Ready means loaded and warmed up. The start period covers building/loading the network (and a
# checkpoint export on first start); failures inside it do not count, the first success does.
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "/opt/atrous/bin/healthcheck.py"]

# uvicorn drains on SIGTERM: it stops accepting, /readyz turns 503, in-flight requests get up to
# ATROUS_SHUTDOWN_GRACE_S to finish. Give the runtime a longer stop timeout than that
# (`docker run --stop-timeout`, compose `stop_grace_period`, k8s `terminationGracePeriodSeconds`).
STOPSIGNAL SIGTERM

# Exec form under tini: tini passes the stop signal to the server alone (with several workers
# the supervisor drains them in its own order: all unready first, then each stopped). `atrous
# serve` listens on ATROUS_HOST:ATROUS_PORT with ATROUS_WORKERS processes (docs/deploy.md).
ENTRYPOINT ["tini", "--"]
CMD ["atrous", "serve"]
