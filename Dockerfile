# NIFF images: three targets, each in a CPU and a CUDA variant (the VARIANT build argument).
#
#   serve-onnx  niff-serve with ONNX Runtime and no torch: the image to serve with (the default target)
#   serve       niff-serve with torch as well, for models that have only a TorchScript artifact
#   export      niff-export with CPU torch, for the init container that bakes a checkpoint (CPU only)
#
#   make image TARGET=serve-onnx VARIANT=cpu      # or: docker build --target serve-onnx --build-arg VARIANT=cpu .
#
# Python packages come only from deploy/image/locks/<target>-<variant>.txt (`make lock`), installed with
# --require-hashes --no-deps in a layer that changes only with that lock; the project follows as a wheel
# in a small layer of its own. CUDA and cuDNN come from PyPI's NVIDIA wheels (torch's own; onnxruntime-gpu
# loads the same ones), so the CUDA variants share the CPU variants' plain Debian base: one CUDA stack,
# and the NVIDIA container toolkit mounts the host's driver. Debian bookworm's python3 is the 3.11 the
# locks are resolved for.
ARG BASE_IMAGE=docker.io/library/debian:12.12-slim
# checkov:skip=CKV_DOCKER_7: checkov cannot resolve `FROM ${BASE_IMAGE}`; the ARG default above is a pinned, non-latest tag, and tests/deploy/test_dockerfile.py asserts that it stays one.
ARG VARIANT=cuda

# ---------------------------------------------------------------------------------------------------
# wheels: a local wheel store, empty unless given as a build context (--build-context wheels=DIR), for
# hosts that hold a wheel no index they reach serves (a CPU torch). The hashes in the lock still decide.
# ---------------------------------------------------------------------------------------------------
FROM scratch AS wheels

# ---------------------------------------------------------------------------------------------------
# runtime: the base with Debian's python3 and an unprivileged user; no package manager (dpkg's
# database stays, for scanners) and no setuid or setgid bits.
# ---------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime

# Package versions are not pinned: the base image tag pins the distribution release, and Debian's
# archive drops superseded versions, so exact pins would break the build within weeks.
# checkov:skip=CKV_DOCKER_9: the check matches the word apt, here the name of the package that `dpkg --purge` removes, not the apt command line.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 libstdc++6 \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old /var/log/* \
    && dpkg --purge apt libapt-pkg6.0 gpgv debian-archive-keyring \
    && dpkg --purge --force-remove-essential --force-depends dpkg \
    && find / -xdev -type f -perm /6000 -exec chmod ug-s {} + \
    && groupadd --gid 10001 niff \
    && useradd --uid 10001 --gid niff --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin niff

# The root file system may be mounted read-only (Kubernetes does), so nothing writes bytecode and
# caches go to /tmp.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    XDG_CACHE_HOME=/tmp/.cache

USER 10001:10001

# ---------------------------------------------------------------------------------------------------
# builder: Debian's pip installs the locks into /opt/venv, a virtual environment of the same python3.
# ---------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder

# Same reasoning as in the runtime stage for not pinning distribution package versions.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv --without-pip /opt/venv \
    && mkdir /wheels

# Every pip run below: into /opt/venv, only files whose hash the lock names, no dependency resolution
# (the lock is complete), wheels only, no bytecode, no cache. Behind a TLS-intercepting proxy, the
# `ca-certificates` build secret (a CA bundle: --secret id=ca-certificates,src=FILE) replaces Debian's
# bundle, which Debian's pip reads, for the pip runs only.
ENV PIP_PYTHON=/opt/venv/bin/python \
    PIP_REQUIRE_HASHES=1 \
    PIP_NO_DEPS=1 \
    PIP_ONLY_BINARY=:all: \
    PIP_NO_COMPILE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_FIND_LINKS=/wheels \
    PYTHONDONTWRITEBYTECODE=1

COPY deploy/image/prune.py /usr/local/lib/prune.py

# ---------------------------------------------------------------------------------------------------
# One virtual environment per target, each keyed only on its lock (and the prune rules).
# ---------------------------------------------------------------------------------------------------
FROM builder AS serve-onnx-venv
ARG VARIANT
COPY deploy/image/locks/serve-onnx-${VARIANT}.txt /tmp/requirements.txt
RUN --mount=type=bind,from=wheels,target=/wheels \
    --mount=type=secret,id=ca-certificates,target=/etc/ssl/certs/ca-certificates.crt \
    pip install -r /tmp/requirements.txt && python3 /usr/local/lib/prune.py /opt/venv

# torch's CPU build is on the PyTorch CPU index; the CUDA locks pin PyPI's CUDA build by its hashes,
# which no file on that index has. Empty TORCH_INDEX_URL: PyPI and the wheels context only.
FROM builder AS serve-venv
ARG VARIANT
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY deploy/image/locks/serve-${VARIANT}.txt /tmp/requirements.txt
RUN --mount=type=bind,from=wheels,target=/wheels \
    --mount=type=secret,id=ca-certificates,target=/etc/ssl/certs/ca-certificates.crt \
    pip install ${TORCH_INDEX_URL:+--extra-index-url "${TORCH_INDEX_URL}"} -r /tmp/requirements.txt \
    && python3 /usr/local/lib/prune.py /opt/venv

# CPU only, whatever VARIANT says: baking and the parity gate run on the CPU.
FROM builder AS export-venv
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY deploy/image/locks/export-cpu.txt /tmp/requirements.txt
RUN --mount=type=bind,from=wheels,target=/wheels \
    --mount=type=secret,id=ca-certificates,target=/etc/ssl/certs/ca-certificates.crt \
    pip install ${TORCH_INDEX_URL:+--extra-index-url "${TORCH_INDEX_URL}"} -r /tmp/requirements.txt \
    && python3 /usr/local/lib/prune.py /opt/venv

# ---------------------------------------------------------------------------------------------------
# project: the wheel of this repository (built with the locked setuptools), installed without its
# dependencies under /staging, so the images copy in only the project's own files.
# ---------------------------------------------------------------------------------------------------
FROM builder AS project
COPY deploy/image/locks/build.txt /tmp/build-requirements.txt
RUN --mount=type=bind,from=wheels,target=/wheels \
    --mount=type=secret,id=ca-certificates,target=/etc/ssl/certs/ca-certificates.crt \
    python3 -m venv --without-pip /opt/build \
    && PIP_PYTHON=/opt/build/bin/python pip install -r /tmp/build-requirements.txt

WORKDIR /src
COPY pyproject.toml README.md ./
COPY contract ./contract
COPY niff ./niff
COPY export ./export
COPY service ./service
RUN PIP_PYTHON=/opt/build/bin/python PIP_REQUIRE_HASHES=0 PIP_ONLY_BINARY=:none: \
        pip wheel --no-build-isolation --wheel-dir /dist . \
    && PIP_REQUIRE_HASHES=0 pip install --no-index --no-warn-script-location --root /staging /dist/*.whl

# ---------------------------------------------------------------------------------------------------
# server: what both serving images share. NIFF_* are niff-serve's settings (service/core/settings.py).
# ---------------------------------------------------------------------------------------------------
FROM runtime AS server

# The server binds every interface inside the container; the model repository is /models, mounted
# by whoever runs the image (KServe mounts /mnt/models and says so with NIFF_MODEL_REPOSITORY). The
# NVIDIA container toolkit reads NVIDIA_DRIVER_CAPABILITIES when it mounts the driver into a GPU pod.
ENV NIFF_MODEL_REPOSITORY=/models \
    NIFF_HOST=0.0.0.0 \
    NIFF_PORT=8000 \
    NIFF_GRPC_PORT=8001 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# HTTP (REST, KServe v2, probes, metrics) and gRPC (KServe v2).
EXPOSE 8000 8001

# Healthy = ready: the models are loaded and warmed up (which can take minutes for large models,
# hence the start period). Uses the venv's Python, so the image needs no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ.get('NIFF_PORT', '8000'), timeout=4)"]

# niff-serve runs as PID 1 and handles SIGTERM itself: it stops accepting, reports not-ready,
# drains in-flight requests, then exits.
ENTRYPOINT ["niff-serve"]

# ---------------------------------------------------------------------------------------------------
# The images. Labels come last: their build-time values (revision, created) change every build and
# must not invalidate the cached layers above them.
# ---------------------------------------------------------------------------------------------------
FROM runtime AS export
COPY --from=export-venv /opt/venv /opt/venv
COPY --from=project /staging/ /
ENTRYPOINT ["niff-export"]
ARG VERSION=unknown
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="niff-export" \
      org.opencontainers.image.description="NIFF image classifiers: niff-export bakes a checkpoint into an ONNX/TorchScript model folder (CPU torch)" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}"

FROM server AS serve
COPY --from=serve-venv /opt/venv /opt/venv
COPY --from=project /staging/ /
ARG VERSION=unknown
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="niff-serve" \
      org.opencontainers.image.description="NIFF image classifiers: niff-serve (REST and KServe v2) with the ONNX Runtime and TorchScript backends" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}"

FROM server AS serve-onnx
COPY --from=serve-onnx-venv /opt/venv /opt/venv
COPY --from=project /staging/ /
ARG VERSION=unknown
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="niff-serve-onnx" \
      org.opencontainers.image.description="NIFF image classifiers: niff-serve (REST and KServe v2) with the ONNX Runtime backend, without torch" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}"
