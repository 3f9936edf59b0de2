# Two commands set everything up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed before the project, pinned to one build: the CPU one (TORCH_VARIANT=cpu), so the
# project's `torch` requirement is already met and nothing pulls a multi-GB CUDA build. It comes from pip's
# configured sources when they hold that wheel, else from PyTorch's index (tools/torch-pip-args.sh).
# A CUDA build instead, e.g.: make install TORCH_VARIANT=cu130. (Not TORCH_VERSION: `make image` passes
# that name on to the image build.)
VENV_TORCH_VERSION ?= 2.13.0
TORCH_VARIANT ?= cpu

.PHONY: install test test-fast lint clean serve export browser

# `make serve` exports a checkpoint (once; again only when the checkpoint or these settings change, then
# with --force over the version 1 it wrote before) and serves it. By default the embedded digits model;
# any other: make serve CHECKPOINT=ckpt.pt SIZE=224 [ARCH=...]
DEFAULT_CHECKPOINT := niff/assets/digits_resnet.pt
CHECKPOINT ?= $(DEFAULT_CHECKPOINT)
SIZE ?= 32
ARCH ?=
NAME ?= $(if $(filter $(DEFAULT_CHECKPOINT),$(CHECKPOINT)),digits,$(basename $(notdir $(CHECKPOINT))))
MODELS ?= models
HOST ?= 127.0.0.1
PORT ?= 8000
GRPC_PORT ?= 8001
# The image `make serve` suggests classifying: the shipped digit for the digits model; any other, your own.
EXAMPLE ?= $(if $(filter $(DEFAULT_CHECKPOINT),$(CHECKPOINT)),examples/digits/digit-7.png,YOUR_IMAGE.jpg)
# The embedded model's kernel report (a few seconds) goes into its folder, for the page at /.
REPORT ?= $(if $(filter $(DEFAULT_CHECKPOINT),$(CHECKPOINT)),--report)
EXPORT_ARGS = $(CHECKPOINT) --size $(SIZE) --out $(MODELS) --name $(NAME) $(if $(ARCH),--arch $(ARCH)) $(REPORT)
EXPORT_STAMP = $(MODELS)/.$(NAME).export

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $$(sh tools/torch-pip-args.sh $(PY) $(VENV_TORCH_VERSION) $(TORCH_VARIANT))
	$(PY) -m pip install -q -e '.[test]'
	touch $@

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint browser
	$(PY) -m pytest

# The fast tier: the service in-process (the app through httpx, the gRPC servicer called directly, the data
# plane) on small ONNX models built without torch; no server process, no port. `make test` runs everything.
test-fast: install
	$(PY) -m pytest -m fast

# The page's tests (tests/service/test_ui_page.py) drive a headless Chromium: Debian's, installed here when
# missing and this is root on a Debian-like system; NIFF_CHROMIUM names another one.
browser:
	@if [ -z "$$NIFF_CHROMIUM" ] && ! command -v chromium >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else \
			echo "make: the page tests need Chromium: sudo apt-get install chromium (or set NIFF_CHROMIUM)" >&2; exit 1; \
		fi; \
	fi

export: install
	@test -f "$(CHECKPOINT)" || { echo "make: checkpoint $(CHECKPOINT) not found" >&2; exit 1; }
	@want="$(EXPORT_ARGS) $$(sha256sum "$(CHECKPOINT)" | cut -d' ' -f1)"; \
	if [ -f "$(MODELS)/$(NAME)/niff.json" ] && [ "$$(cat "$(EXPORT_STAMP)" 2>/dev/null)" = "$$want" ]; then \
		echo "Using the cached export in $(MODELS)/$(NAME) (remove it to export again)"; \
	else \
		$(VENV)/bin/niff-export $(EXPORT_ARGS) --force && echo "$$want" > "$(EXPORT_STAMP)"; \
	fi

serve: export
	@echo "Starting niff-serve on http://$(HOST):$(PORT) (gRPC on $(HOST):$(GRPC_PORT)) with the model repository $(MODELS)/ (Ctrl-C stops it)."
	@echo "Once it reports ready, open http://$(HOST):$(PORT)/ in a browser, or try:"
	@echo "  curl -s --data-binary @$(EXAMPLE) http://$(HOST):$(PORT)/v1/models/$(NAME):classify"
	$(VENV)/bin/niff-serve --model-repository $(MODELS) --host $(HOST) --port $(PORT) --grpc-port $(GRPC_PORT)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# --- Container images and deployment checks (Dockerfile, deploy/, docs/deploy.md) ---------------------
# `make image TARGET=serve-onnx|serve|export VARIANT=cuda|cpu` builds niff-<target>:<version>-<variant>
# with docker or podman, whichever can build here; export exists in the cpu variant only. Set, these
# are passed through as build arguments: BASE_IMAGE, TORCH_INDEX_URL (may be empty: no PyTorch index).
# WHEELS=DIR gives the build a local wheel store (the `wheels` build context); CA_CERTIFICATES=FILE a CA
# bundle for pip behind a TLS-intercepting proxy (the `ca-certificates` build secret). The image labels get
# the version from pyproject.toml and the revision, time and source of this build.
# Restricted hosts (podman in a sandbox, local base image): IMAGE_BUILD_FLAGS='--isolation chroot'.
CONTAINER_ENGINE ?= $(shell if docker info >/dev/null 2>&1; then echo docker; \
	elif command -v podman >/dev/null 2>&1; then echo podman; \
	elif command -v docker >/dev/null 2>&1; then echo docker; fi)
TARGET ?= serve-onnx
VARIANT ?= $(if $(filter export,$(TARGET)),cpu,cuda)
IMAGE_NAME ?= niff-$(TARGET)
IMAGE_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE_TAG ?= $(IMAGE_VERSION)-$(VARIANT)
IMAGE_LOCK = deploy/image/locks/$(TARGET)-$(VARIANT).txt
IMAGE_BUILD_FLAGS ?=
WHEELS ?=
CA_CERTIFICATES ?=
comma := ,
IMAGE_REVISION := $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
IMAGE_SOURCE := $(shell git config --get remote.origin.url 2>/dev/null || echo unknown)
IMAGE_CREATED := $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
# podman writes OCI images by default, which have no HEALTHCHECK: ask for the docker format.
IMAGE_FORMAT_FLAG = $(if $(filter podman,$(notdir $(CONTAINER_ENGINE))),--format docker)
IMAGE_BUILD_ARGS = --build-arg VARIANT=$(VARIANT) --build-arg VERSION=$(IMAGE_VERSION) \
	--build-arg REVISION=$(IMAGE_REVISION) --build-arg CREATED=$(IMAGE_CREATED) \
	--build-arg SOURCE=$(IMAGE_SOURCE) \
	$(foreach v,BASE_IMAGE TORCH_INDEX_URL,$(if $(filter-out undefined,$(origin $(v))),--build-arg $(v)=$($(v)))) \
	$(if $(WHEELS),--build-context wheels=$(WHEELS)) \
	$(if $(CA_CERTIFICATES),--secret id=ca-certificates$(comma)src=$(CA_CERTIFICATES))
# The CPU builds of torch for `make lock`: a local wheel store (pip's PIP_FIND_LINKS, where set), else
# the PyTorch CPU index.
TORCH_WHEELS ?= $(PIP_FIND_LINKS)
# checkov runs from its own virtual environment (why: deploy/checks-requirements.txt).
CHECKS_VENV ?= build/checks-venv
# So does PyTriton, the transformer test's real Triton (why: tests/service/triton-requirements.txt).
TRITON_VENV ?= build/triton-venv

.PHONY: image image-test lock checks-venv triton-venv

image:
	@test -n "$(CONTAINER_ENGINE)" || { echo "make image: neither docker nor podman found" >&2; exit 1; }
	@test -f "$(IMAGE_LOCK)" || { echo "make image: no $(TARGET) image in the $(VARIANT) variant (no $(IMAGE_LOCK))" >&2; exit 1; }
	$(CONTAINER_ENGINE) build $(strip $(IMAGE_FORMAT_FLAG) $(IMAGE_BUILD_FLAGS) --target $(TARGET) $(IMAGE_BUILD_ARGS) -t $(IMAGE_NAME):$(IMAGE_TAG)) -f Dockerfile .

# Builds the CPU serve-onnx and export images and runs them (deploy/image/ci.sh; CI runs it after `make test`).
image-test:
	deploy/image/ci.sh

lock: install
	$(PY) deploy/image/lock.py --constraint 'torch==$(VENV_TORCH_VERSION)' $(foreach d,$(TORCH_WHEELS),--find-links $(d))

checks-venv: $(CHECKS_VENV)/.installed

$(CHECKS_VENV)/.installed: deploy/checks-requirements.txt
	$(PYTHON) -m venv $(CHECKS_VENV)
	$(CHECKS_VENV)/bin/python -m pip install -q -r deploy/checks-requirements.txt
	touch $@

triton-venv: $(TRITON_VENV)/.installed

$(TRITON_VENV)/.installed: tests/service/triton-requirements.txt
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q -r tests/service/triton-requirements.txt
	touch $@

test: checks-venv triton-venv
