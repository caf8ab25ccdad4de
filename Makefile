# Two entry points, both self-contained on a fresh machine (no GPU, no Docker needed):
#   make run   - set up .venv and measure one experiment (built-in tiny model, CPU)
#   make test  - set up .venv with the test extras and run the whole test suite (CI runs this)
#   make test-fast - the unit and policy tests only: no containers, SLURM, vLLM or real-model runs
# Extra Hydra overrides for `make run`:  make run ARGS="backend.batch_size=4 max_output_tokens=32"

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned so pip takes the CPU wheel where one is provided locally; on a CUDA
# machine install llem with `pip install -e ".[pytorch]"` into an environment of your own.
TORCH_SPEC ?= torch==2.13.0
PIP := $(BIN)/python -m pip install -q --disable-pip-version-check

.PHONY: run test test-fast setup setup-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.stamp-run: pyproject.toml | $(BIN)/python
	$(PIP) "$(TORCH_SPEC)"
	$(PIP) -e ".[pytorch]"
	touch $@

$(VENV)/.stamp-test: pyproject.toml scripts/setup_test_deps.sh scripts/deps/podman.sh scripts/deps/chromium.sh scripts/deps/slurm.sh $(VENV)/.stamp-run
	$(PIP) -e ".[pytorch,dev,campaign]"
	bash scripts/setup_test_deps.sh "$(BIN)/python"
	touch $@

setup: $(VENV)/.stamp-run
setup-test: $(VENV)/.stamp-test

run: setup
	$(BIN)/python -m llem $(ARGS)

# The slowest 25 tests are listed at the end, so a test that grew slow is seen.
test: setup-test
	$(BIN)/python -m pytest -q -m "not gpu" --durations=25 $(PYTEST_ARGS)

# Markers are described in docs/contributing.md.
FAST_MARKERS := not slow and not container and not slurm and not vllm and not gpu
test-fast: setup-test
	$(BIN)/python -m pytest -q -m "$(FAST_MARKERS)" --durations=10 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info outputs multirun
