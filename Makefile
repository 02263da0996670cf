# The two commands of the README: `make book` and `make test`. Both create .venv when absent.
PYTHON ?= python3
VENV ?= .venv
# torch first and pinned: this release is on PyPI as a CPU build for this machine's disk and
# as a CUDA build on Linux GPU machines; an unpinned `torch` could pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
ARGS ?=

.PHONY: book test test-fast venv list clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[book,test]"
	touch $@

venv: $(BIN)/.installed

book: venv  ## execute every chapter with papermill, build the HTML, print index.html
	$(BIN)/dynbook book $(ARGS)

# The unit tests run spread over the cores (pytest-xdist); the chapter tests then make their
# runs as separate processes, DYNBOOK_TEST_JOBS (default 2) at a time.
test: venv  ## unit tests + every chapter executed with profile=quick
	$(BIN)/python -m pytest -m "not chapter" -n auto $(ARGS)
	$(BIN)/python -m pytest -m chapter $(ARGS)

test-fast: venv  ## unit tests only: no chapter runs, no end-to-end script runs (the developer's loop)
	$(BIN)/python -m pytest -m "not chapter and not slow" -n auto $(ARGS)

list: venv
	$(BIN)/dynbook list

clean:
	rm -rf _build
