# Two commands set everything up on a fresh machine:
#   make workbook   install (first use) and execute every notebook, writing figures/
#   make test       install dev extras (first use) and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: workbook test lab models evaluate bench lint clean-venv

$(VENV)/.runtime: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.runtime
	$(PIP) install --quiet -e ".[dev,hf]"
	touch $@

workbook: $(VENV)/.runtime
	$(PY) -m gae_utils.workbook

test: $(VENV)/.dev
	$(PY) -m ruff check .
	$(PY) -m pytest

lab: $(VENV)/.runtime
	$(PY) -m jupyter lab notebooks/

models: $(VENV)/.runtime
	$(PY) -m gae_utils.train all

evaluate: $(VENV)/.runtime
	$(PY) -m gae_utils.evaluate --model shapes-vit --n 300 --seed 7 --json outputs/evaluate-shapes-vit.json

bench: $(VENV)/.runtime
	$(PY) -m gae_utils.bench --model vit_base_patch16_224 --batch 8 --json outputs/bench-vit-b16.json

lint: $(VENV)/.dev
	$(PY) -m ruff check .

clean-venv:
	rm -rf $(VENV)
