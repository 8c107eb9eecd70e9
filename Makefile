# Two commands set everything up on a fresh machine:
#   make workbook   install (first use) and execute every notebook: executed copies to outputs/notebooks,
#                   figures to figures/ (a figure whose picture did not change is left as it is)
#   make test       install dev extras (first use), run ruff, mypy (gae_utils) and the whole test suite
# Also: make lab (JupyterLab; .py notebooks open as notebooks), make site (static HTML of the executed
# workbook and docs/ in outputs/site), make slides (the opening talk, outputs/slides/index.html),
# make lecture (each explorer as an app), make figures (rewrite the committed figures/),
# make models / evaluate / bench.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: workbook test lab site slides figures lecture models evaluate bench gpu lint clean-venv

$(VENV)/.runtime: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e ".[hf,minilm,site]"
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.runtime
	$(PIP) install --quiet -e ".[dev,hf]"
	touch $@

workbook: $(VENV)/.runtime
	$(PY) -m gae_workbook.tools.run $(WORKBOOK_ARGS)

test: $(VENV)/.dev
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest

# jupyter-config/ makes jupytext's notebook view the default for .py files (double-click opens a notebook)
# and renders .md files. The server is rooted at the repository, so the notebooks' links to docs/ open;
# the browser starts in notebooks/. Figures a student's run saves go to outputs/figures, not figures/.
lab: $(VENV)/.runtime
	JUPYTER_CONFIG_PATH="$(CURDIR)/jupyter-config" GAE_FIGURES_DIR="$(CURDIR)/outputs/figures" \
		$(PY) -m jupyter lab --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url=/lab/tree/notebooks \
		$(if $(filter 0,$(shell id -u)),--allow-root)

site: $(VENV)/.runtime
	$(PY) -m gae_workbook.tools.run $(WORKBOOK_ARGS)
	$(PY) -m gae_workbook.tools.site

# the instructor's opening talk: one self-contained HTML file, no network (arrow keys to move)
slides: $(VENV)/.runtime
	$(PY) -m gae_workbook.tools.slides

# the same full-size run as make workbook: figures/ (PNG + PDF), a figure rewritten only when its picture changed
figures: $(VENV)/.runtime
	$(PY) -m gae_workbook.tools.run --figures figures

$(VENV)/.lecture: $(VENV)/.runtime
	$(PIP) install --quiet -e ".[hf,minilm,lecture]"
	touch $@

# every explorer as a small app; kernels are pre-heated so a page opens on a ready explorer
lecture: $(VENV)/.lecture
	$(PY) -m voila lecture/ --Voila.ip=127.0.0.1 --token --preheat_kernel=True --VoilaKernelManager.fill_delay=600

models: $(VENV)/.runtime
	$(PY) -m gae_workbook.models.train all

evaluate: $(VENV)/.runtime
	for m in shapes-vit shapes-swin shapes-clip shapes-vqa shapes-translate shapes-lm; do \
		$(PY) -m gae_workbook.evaluate --model $$m --n 300 --seed 7 --json outputs/evaluate-$$m.json || exit 1; \
	done

bench: $(VENV)/.runtime
	$(PY) -m gae_workbook.tools.bench --model vit_base_patch16_224 --batch 8 --json outputs/bench-vit-b16.json
	$(PY) -m gae_workbook.tools.bench --model swin_tiny_patch4_window7_224 --batch 8 --json outputs/bench-swin-t.json
	$(PY) -m gae_workbook.tools.bench --dual --captions 64 --json outputs/bench-clip-64-captions.json
	$(PY) -m gae_workbook.tools.bench --vqa shapes-vqa --batch 16 --json outputs/bench-shapes-vqa.json
	$(PY) -m gae_workbook.tools.bench --vqa lxmert-base --batch 16 --json outputs/bench-lxmert-base.json
	$(PY) -m gae_workbook.tools.bench --seq2seq --length 32 --json outputs/bench-marian-32-tokens.json
	$(PY) -m gae_workbook.tools.bench --video videomae --json outputs/bench-videomae-4-clips.json
	$(PY) -m gae_workbook.tools.bench --video timesformer --json outputs/bench-timesformer-4-clips.json

# The README's GPU table on a machine with CUDA (outputs/gpu/table.md and one JSON per part).
# GPU_PY=python3 uses a Python that already has torch, timm and transformers instead of the venv.
GPU_PY ?= $(PY)
gpu: $(if $(filter $(PY),$(GPU_PY)),$(VENV)/.runtime)
	PYTHONUNBUFFERED=1 $(GPU_PY) -m gae_workbook.tools.gpu --out outputs/gpu $(GPU_ARGS)

lint: $(VENV)/.dev
	$(PY) -m ruff check .
	$(PY) -m mypy

clean-venv:
	rm -rf $(VENV)
