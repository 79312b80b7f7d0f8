# lineloop front door. `make demo` runs the loop; `make test` installs and tests.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
CONSTRAINTS := deploy/constraints.txt
export LINELOOP_STATE_DIR ?= $(CURDIR)/.lineloop

LIBS := libs/contracts libs/storage libs/telemetry libs/bus libs/runtime libs/vision libs/serving libs/model libs/cli deploy/local libs/edge
SERVICES := ingest labeling training compiler registry monitor
PACKAGES := $(LIBS) $(addprefix services/,$(SERVICES))
STAMP := $(VENV)/.installed

.PHONY: install proto proto-check catalogue catalogue-check stack-up stack-down stack-status up down demo test test-fast bench chaos clean lint-deploy

install: $(STAMP)

# Editable installs of src/ layouts are plain .pth path entries, so the
# `lineloop` namespace spans every package without import hooks.
$(STAMP): $(CONSTRAINTS) tests/requirements.txt $(addsuffix /pyproject.toml,$(PACKAGES))
	bash deploy/local/system-deps.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade -c $(CONSTRAINTS) pip setuptools wheel
	$(PIP) install -q -c $(CONSTRAINTS) torch
	$(PIP) install -q -c $(CONSTRAINTS) --no-build-isolation \
		$(addprefix -e ,$(PACKAGES)) -r tests/requirements.txt
	@# Triton's server binary: the wheel's own requirements (numpy<2, its Python API) are not used.
	$(PIP) install -q -c $(CONSTRAINTS) --no-deps nvidia-pytriton
	@touch $@

proto: $(STAMP)
	$(BIN)/python -m lineloop.contracts.codegen proto libs/contracts/src

proto-check: $(STAMP)
	$(BIN)/python -m lineloop.contracts.codegen --check proto libs/contracts/src

# Files derived from the service catalogue (libs/contracts/src/lineloop/contracts/services.toml):
# KEDA's triggers and the NetworkPolicies; a test fails when they are stale.
catalogue: $(STAMP)
	$(BIN)/python deploy/k8s/keda_triggers.py
	$(BIN)/python deploy/k8s/network_policies.py

catalogue-check: $(STAMP)
	@rc=0; $(BIN)/python deploy/k8s/keda_triggers.py --check || rc=1; \
	$(BIN)/python deploy/k8s/network_policies.py --check || rc=1; exit $$rc

stack-up: $(STAMP)
	$(BIN)/lineloop stack up

stack-down: $(STAMP)
	$(BIN)/lineloop stack down

stack-status: $(STAMP)
	$(BIN)/lineloop stack status

up: $(STAMP)
	$(BIN)/lineloop up

down: $(STAMP)
	$(BIN)/lineloop down

demo: $(STAMP)
	$(BIN)/lineloop demo

test: $(STAMP)
	$(BIN)/python -m pytest -c tests/pytest.ini --rootdir=. --durations=25

test-fast: $(STAMP)
	$(BIN)/python -m pytest -c tests/pytest.ini --rootdir=. -m "not slow"

# Benchmarks are scripts, not tests: each prints its figures and ratios (services', then the
# platform's: deploy/local/bench, start-up of the six services).
bench: $(STAMP)
	@set -e; for b in services/*/bench/bench_*.py deploy/local/bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b; done

# Faults injected into a running loop (docs/chaos.md), then the fuzzers at full size.
# Both always run; the target fails if either does.
chaos: $(STAMP)
	@rc=0; start=$$(date +%s); \
	$(BIN)/python tests/chaos/run_chaos.py || rc=1; \
	$(BIN)/python tests/chaos/run_chaos.py --postgres || rc=1; \
	$(BIN)/python tests/chaos/run_burst.py --rate 4 --burst-frames 600 --delay-s 2 || rc=1; \
	$(BIN)/python tests/fuzz/run_fuzz.py --cases 1000 || rc=1; \
	echo "make chaos: rc $$rc in $$(( ($$(date +%s) - start) / 60 )) min"; exit $$rc

clean:
	rm -rf $(VENV) .pytest_cache
