# Two commands set everything up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch, installed before the project so nothing pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install test lint clean serve export

# `make serve` exports a checkpoint (once; again only when the checkpoint or these settings change) and
# serves it. By default the embedded digits model; any other: make serve CHECKPOINT=ckpt.pt SIZE=224 [ARCH=...]
DEFAULT_CHECKPOINT := niff/assets/digits_resnet.pt
CHECKPOINT ?= $(DEFAULT_CHECKPOINT)
SIZE ?= 32
ARCH ?=
NAME ?= $(if $(filter $(DEFAULT_CHECKPOINT),$(CHECKPOINT)),digits,$(basename $(notdir $(CHECKPOINT))))
MODELS ?= models
HOST ?= 127.0.0.1
PORT ?= 8000
GRPC_PORT ?= 8001
EXAMPLE ?= examples/digits/digit-7.png
EXPORT_ARGS = $(CHECKPOINT) --size $(SIZE) --out $(MODELS) --name $(NAME) $(if $(ARCH),--arch $(ARCH))
EXPORT_STAMP = $(MODELS)/.$(NAME).export

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint
	$(PY) -m pytest

export: install
	@test -f "$(CHECKPOINT)" || { echo "make: checkpoint $(CHECKPOINT) not found" >&2; exit 1; }
	@want="$(EXPORT_ARGS) $$(sha256sum "$(CHECKPOINT)" | cut -d' ' -f1)"; \
	if [ -f "$(MODELS)/$(NAME)/niff.json" ] && [ "$$(cat "$(EXPORT_STAMP)" 2>/dev/null)" = "$$want" ]; then \
		echo "Using the cached export in $(MODELS)/$(NAME) (remove it to export again)"; \
	else \
		$(VENV)/bin/niff-export $(EXPORT_ARGS) && echo "$$want" > "$(EXPORT_STAMP)"; \
	fi

serve: export
	@echo "Starting niff-serve on http://$(HOST):$(PORT) (gRPC on $(HOST):$(GRPC_PORT)) with the model repository $(MODELS)/ (Ctrl-C stops it)."
	@echo "Once it reports ready, try:"
	@echo "  curl -s --data-binary @$(EXAMPLE) http://$(HOST):$(PORT)/v1/models/$(NAME):classify"
	$(VENV)/bin/niff-serve --model-repository $(MODELS) --host $(HOST) --port $(PORT) --grpc-port $(GRPC_PORT)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# --- Container image and deployment checks (Dockerfile, deploy/, docs/deploy.md) ---------------------
# `make image` builds the serving image with docker or podman, whichever can build here. Build
# arguments are passed through when set: BASE_IMAGE, TORCH_VERSION, TORCH_INDEX_URL,
# ONNXRUNTIME_PACKAGE, ONNXRUNTIME_VERSION. CPU image:
#   make image BASE_IMAGE=ubuntu:24.04 TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu ONNXRUNTIME_PACKAGE=onnxruntime
# Restricted hosts (podman in a sandbox, local base image): IMAGE_BUILD_FLAGS='--isolation chroot'.
CONTAINER_ENGINE ?= $(shell if docker info >/dev/null 2>&1; then echo docker; \
	elif command -v podman >/dev/null 2>&1; then echo podman; \
	elif command -v docker >/dev/null 2>&1; then echo docker; fi)
IMAGE_NAME ?= niff-serve
IMAGE_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE_TAG ?= $(IMAGE_VERSION)-$(if $(filter onnxruntime,$(ONNXRUNTIME_PACKAGE)),cpu,cuda)
IMAGE_BUILD_FLAGS ?=
# podman writes OCI images by default, which have no HEALTHCHECK: ask for the docker format.
IMAGE_FORMAT_FLAG = $(if $(filter podman,$(notdir $(CONTAINER_ENGINE))),--format docker)
IMAGE_BUILD_ARGS = $(foreach v,BASE_IMAGE TORCH_VERSION TORCH_INDEX_URL ONNXRUNTIME_PACKAGE ONNXRUNTIME_VERSION,$(if $($(v)),--build-arg $(v)=$($(v))))
# checkov runs from its own virtual environment (why: deploy/checks-requirements.txt).
CHECKS_VENV ?= build/checks-venv

.PHONY: image checks-venv

image:
	@test -n "$(CONTAINER_ENGINE)" || { echo "make image: neither docker nor podman found" >&2; exit 1; }
	$(CONTAINER_ENGINE) build $(strip $(IMAGE_FORMAT_FLAG) $(IMAGE_BUILD_FLAGS) $(IMAGE_BUILD_ARGS) -t $(IMAGE_NAME):$(IMAGE_TAG)) -f Dockerfile .

checks-venv: $(CHECKS_VENV)/.installed

$(CHECKS_VENV)/.installed: deploy/checks-requirements.txt
	$(PYTHON) -m venv $(CHECKS_VENV)
	$(CHECKS_VENV)/bin/python -m pip install -q -r deploy/checks-requirements.txt
	touch $@

test: checks-venv
