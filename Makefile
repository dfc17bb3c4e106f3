# Set-up and the two README commands. Everything installs into .venv/ on first use.
#   make train   the main job (see README)
#   make test    the test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
# The CPU wheel of torch 2.13.0 is on this kind of machine's disk; on a CUDA machine
# override it, e.g. `make test TORCH_SPEC="torch==2.13.0 --index-url ..."`.
TORCH_SPEC ?= torch==2.13.0
# Optional extras. FID_CLIP needs open-clip-torch, whose torchvision does not import beside the
# CPU torch 2.13.0: use a separate venv with the matching pair (a CUDA build that runs on CPU), e.g.
#   make test VENV=.venv-clip EXTRAS=data,dev,clip TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"
EXTRAS ?= data,dev
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup test train lint clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	$(PY) -m pip install --quiet --no-deps "animal-mnist>=0.4"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

train: $(STAMP)
	$(PY) -m lightning_infdiff.quickstart

lint: $(STAMP)
	$(PY) -m ruff check lightning_infdiff tests benchmarks

clean-venv:
	rm -rf $(VENV)
