# Two commands set everything up on a fresh machine:
#   make workbook   install (first use) and execute every notebook, writing figures/
#   make test       install dev extras (first use), run ruff, mypy (gae_utils) and the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: workbook test lab models evaluate bench lint clean-venv

$(VENV)/.runtime: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e ".[hf,minilm]"
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.runtime
	$(PIP) install --quiet -e ".[dev,hf]"
	touch $@

workbook: $(VENV)/.runtime
	$(PY) -m gae_workbook.run $(WORKBOOK_ARGS)

test: $(VENV)/.dev
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest

lab: $(VENV)/.runtime
	$(PY) -m jupyter lab notebooks/

models: $(VENV)/.runtime
	$(PY) -m gae_workbook.train all

evaluate: $(VENV)/.runtime
	for m in shapes-vit shapes-clip shapes-vqa shapes-translate; do \
		$(PY) -m gae_workbook.evaluate --model $$m --n 300 --seed 7 --json outputs/evaluate-$$m.json || exit 1; \
	done

bench: $(VENV)/.runtime
	$(PY) -m gae_workbook.bench --model vit_base_patch16_224 --batch 8 --json outputs/bench-vit-b16.json
	$(PY) -m gae_workbook.bench --dual --captions 64 --json outputs/bench-clip-64-captions.json
	$(PY) -m gae_workbook.bench --vqa shapes-vqa --batch 16 --json outputs/bench-shapes-vqa.json
	$(PY) -m gae_workbook.bench --vqa lxmert-base --batch 16 --json outputs/bench-lxmert-base.json
	$(PY) -m gae_workbook.bench --seq2seq --length 32 --json outputs/bench-marian-32-tokens.json

lint: $(VENV)/.dev
	$(PY) -m ruff check .
	$(PY) -m mypy

clean-venv:
	rm -rf $(VENV)
