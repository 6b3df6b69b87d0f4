# Two commands a newcomer needs (README): `make demo` and `make test`.
# Both create their own virtualenv (.venv) and install the project into it first.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test up lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[all,dev]"
	touch $(STAMP)

## Start the embedded pipeline, simulate traffic, print the results.
demo: $(STAMP)
	$(BIN)/feedbackloop demo

## The whole test suite: lint and types, then unit + integration (embedded broker and chDB
## unless configured).
test: lint
	./scripts/ensure-system-packages
	$(BIN)/python -m pytest

## Run the pipeline until Ctrl-C.
up: $(STAMP)
	$(BIN)/feedbackloop up

lint: $(STAMP)
	$(BIN)/ruff check feedbackloop tests bench
	$(BIN)/ruff format --check feedbackloop tests bench
	$(BIN)/mypy feedbackloop

bench: $(STAMP)
	$(BIN)/python bench/bench_sdk.py
	$(BIN)/python bench/bench_stream.py
	$(BIN)/python bench/bench_sink.py
	$(BIN)/python bench/bench_queries.py

clean:
	rm -rf $(VENV) var artifacts .pytest_cache
