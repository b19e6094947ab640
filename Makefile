# Two commands for a newcomer: `make demo` and `make test`. Both create .venv on first use.
# TORCH_SPEC pins the torch build installed *before* the package. PyPI's Linux torch is the
# multi-GB CUDA build: on a CPU machine without a local CPU wheel use
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.c2w_fast-installed
PYTEST_ARGS ?=
# The oldest Triton the kernels support (what torch 2.10 and 2.11 install); the tests also compile every kernel with it.
TRITON_OLDEST ?= triton==3.6.0
OLDEST_DIR := $(VENV)/triton-oldest
OLDEST_STAMP := $(VENV)/.triton-oldest-installed

.PHONY: demo test install clean

demo: $(STAMP)
	$(PY) -m c2w_fast.demo

test: $(STAMP) $(OLDEST_STAMP)
	C2W_TRITON_OLDEST=$(OLDEST_DIR) $(PY) -m pytest -n 2 -q $(PYTEST_ARGS)

install: $(STAMP)

$(STAMP): setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.hpp)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) install -q -e ".[test]"
	touch $@

$(OLDEST_STAMP): $(STAMP)
	$(PIP) install -q --no-deps --upgrade --target $(OLDEST_DIR) "$(TRITON_OLDEST)"
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info c2w_fast/_cpu*.so
