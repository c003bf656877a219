# make demo : venv + install + the main job on the shipped default
# make test : venv + install .[dev] + the test suite (what CI runs)
# make aarch64-check : the edge runtime in an arm64 Bookworm rootfs under qemu vs. x86 (root, slow; not in make test)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
DATA ?= ../shared/data/fer2013

.PHONY: demo test venv clean aarch64-check

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

aarch64-check: $(STAMP)
	PYTHON=$(abspath $(BIN))/python nice -n 10 devices/emulate-aarch64.sh check --data $(DATA)
