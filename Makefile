# The README's commands. A GPU user overrides the torch spec, e.g.
#   make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup demo test test-slow clean

setup: $(VENV)/.installed

# torch first, pinned, so resolving the package never pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[data,test]"
	touch $@

demo: setup
	$(BIN)/hf-misleader demo

test: setup
	$(BIN)/python -m pytest -q --durations=10

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) outputs build dist *.egg-info
