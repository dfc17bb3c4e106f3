# Set-up and the two README commands. Each installs its own virtual environment on first use.
#   make train   the main job (see README), in .venv: the CPU torch 2.13.0 wheel, light (~1 GB)
#   make test    the test suite (what CI runs), in .venv-test: everything, including the CLIP /
#                FID extras. open-clip-torch needs torchvision, and PyPI's torchvision does not
#                import beside the CPU torch 2.13.0, so the test venv takes the matching pair
#                torch 2.14.1 + torchvision 0.29.1 (a CUDA build, ~6 GB, that runs on CPU).
# On a CUDA machine override the torch specs, e.g.
#   make train TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
PYTHON ?= python3

VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS     ?= data,dev

TEST_VENV       ?= .venv-test
TEST_TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
TEST_EXTRAS     ?= data,dev,clip

PY      := $(VENV)/bin/python
TEST_PY := $(TEST_VENV)/bin/python
HASH    := $(shell sha1sum pyproject.toml | cut -c1-12)

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

# $(1) venv, $(2) torch spec, $(3) extras
define install
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade pip
	$(1)/bin/python -m pip install --quiet $(2)
	$(1)/bin/python -m pip install --quiet -e ".[$(3)]"
	$(1)/bin/python -m pip install --quiet --no-deps "animal-mnist>=0.4"
	rm -f $(1)/.installed-*
	touch $(1)/.installed-$(HASH)
endef

.PHONY: setup setup-test test train lint clean-venv

setup: $(VENV)/.installed-$(HASH)
setup-test: $(TEST_VENV)/.installed-$(HASH)

$(VENV)/.installed-$(HASH): pyproject.toml
	$(call install,$(VENV),$(TORCH_SPEC),$(EXTRAS))

$(TEST_VENV)/.installed-$(HASH): pyproject.toml
	$(call install,$(TEST_VENV),$(TEST_TORCH_SPEC),$(TEST_EXTRAS))

test: setup-test
	$(TEST_PY) -m pytest -q tests

train: setup
	$(PY) -m lightning_infdiff.quickstart

lint: setup
	$(PY) -m ruff check lightning_infdiff tests benchmarks

clean-venv:
	rm -rf $(VENV) $(TEST_VENV)
