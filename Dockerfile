# niff-serve: the NIFF inference service (and niff-export for deploy-time export).
#
# GPU image (default):
#   make image                      # or: docker build -t niff-serve:0.1.0-cuda .
# CPU-only image (same Dockerfile, another base, the CPU builds of torch and ONNX Runtime):
#   make image IMAGE_TAG=0.1.0-cpu BASE_IMAGE=ubuntu:24.04 \
#     TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu ONNXRUNTIME_PACKAGE=onnxruntime
#
# Version choices (checked together, see docs/deploy.md): torch 2.13.0 on PyPI is a CUDA 13.0 build
# (it brings its own CUDA/cuDNN wheels); onnxruntime-gpu 1.31.1 on PyPI is built for CUDA 13.x and
# cuDNN 9, which this base provides. Both stages use the same base so the virtual environment built
# in the first stage finds the same /usr/bin/python3 (Ubuntu 24.04: Python 3.12) in the second.
ARG BASE_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
# checkov:skip=CKV_DOCKER_7: checkov cannot resolve `FROM ${BASE_IMAGE}`; the ARG default above is a pinned, non-latest tag, and tests/deploy/test_dockerfile.py asserts that it stays one.

# ---------------------------------------------------------------------------------------------------
# builder: a virtual environment with torch, the project and its serving/export dependencies.
# Every dependency ships as a binary wheel, so no compiler is installed even here.
# ---------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple
ARG ONNXRUNTIME_PACKAGE=onnxruntime-gpu
ARG ONNXRUNTIME_VERSION=1.31.1

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# Package versions are not pinned: the base image tag pins the distribution release, and Ubuntu's
# archive drops superseded versions, so exact pins would break the build within weeks.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH

# torch first and from its own index: the CUDA (or CPU) build is chosen here, before the project's
# `torch` requirement could pull another one. Its own layer, so source edits do not re-download it.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY contract ./contract
COPY niff ./niff
COPY export ./export
COPY service ./service

# The project (not editable) with the serving and export extras. The extras name `onnxruntime`;
# the GPU image replaces it by `onnxruntime-gpu`, which provides the same `onnxruntime` module
# (installing both would let one overwrite the other's files), and whose other requirements
# (numpy, protobuf, flatbuffers, packaging, sympy) the CPU package already brought.
RUN pip install --no-cache-dir "/src[service,export]" \
    && if [ "${ONNXRUNTIME_PACKAGE}" != "onnxruntime" ]; then \
         pip uninstall -y onnxruntime \
         && pip install --no-cache-dir --no-deps "${ONNXRUNTIME_PACKAGE}==${ONNXRUNTIME_VERSION}"; \
       fi \
    && python -c "import onnxruntime, niff_serve, niff_export, niff; print('onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers())" \
    && pip uninstall -y pip

# ---------------------------------------------------------------------------------------------------
# runtime: the CUDA runtime + cuDNN base, the distribution's Python interpreter (no compilers, no
# pip, no headers), the virtual environment, and an unprivileged user.
# ---------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime

LABEL org.opencontainers.image.title="niff-serve" \
      org.opencontainers.image.description="NIFF image classifiers: REST and KServe v2 inference service (niff-serve) and exporter (niff-export)" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="0.1.0"

# Same reasoning as in the builder for not pinning distribution package versions.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 niff \
    && useradd --uid 10001 --gid niff --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin niff \
    && install -d -o 10001 -g 10001 -m 0755 /models

COPY --from=builder /opt/venv /opt/venv

# NIFF_* are niff-serve's settings (service/settings.py). The server binds every interface inside
# the container; the model repository is the /models volume. The root file system may be mounted
# read-only (Kubernetes does), so nothing writes bytecode and caches go to /tmp.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    XDG_CACHE_HOME=/tmp/.cache \
    NIFF_MODEL_REPOSITORY=/models \
    NIFF_HOST=0.0.0.0 \
    NIFF_PORT=8000 \
    NIFF_GRPC_PORT=8001

VOLUME ["/models"]
# HTTP (REST, KServe v2, probes, metrics) and gRPC (KServe v2).
EXPOSE 8000 8001

USER 10001:10001

# Healthy = ready: the models are loaded and warmed up (which can take minutes for large models,
# hence the start period). Uses the venv's Python, so the image needs no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ.get('NIFF_PORT', '8000'), timeout=4)"]

# niff-serve runs as PID 1 and handles SIGTERM itself: it stops accepting, reports not-ready,
# drains in-flight requests, then exits. `niff-export` is on PATH for init containers.
ENTRYPOINT ["niff-serve"]
