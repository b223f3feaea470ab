# `make demo` and `make test` set everything up themselves on a fresh machine (Python 3.11).
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dynopool-nas quick

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/python experiments/benchmark.py --write docs/benchmark.md

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
