# make demo : venv + install + the main job on the shipped default
# make test : venv + install .[dev] + the test suite (what CI runs)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
DATA ?= ../shared/data/fer2013

.PHONY: demo test venv clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

demo: $(STAMP)
	$(BIN)/python -m train --data $(DATA) --model cbilstm --epochs 3 --fraction 0.2 --out runs/demo
	@echo "demo outputs: runs/demo (model.keras, manifest.json, plots, classification_report.txt)"

clean:
	rm -rf runs artifacts .cache .pytest_cache
