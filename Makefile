# bevstream: the two commands are `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= demo_out

.PHONY: venv test test-slow demo lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check .

test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# Long checks that CI skips (GPU-sized benchmarks, long training runs).
test-slow: venv
	$(BIN)/python -m pytest -q -m slow

demo: venv
	$(BIN)/python scripts/demo.py --out $(DEMO_DIR)

clean:
	rm -rf $(DEMO_DIR)
