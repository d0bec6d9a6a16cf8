# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)  ## every role at small scale, with its report (a few minutes); prints where the report is
	$(BIN)/veil run scenarios/quickstart.yaml --report

table5: $(STAMP)  ## the paper's Table 5 on the built-in photos: five training seeds, the report, the checks
	$(BIN)/veil run scenarios/collab-10-1.yaml --seeds 0-4 --report
	$(BIN)/python bench/paper_shape.py --run latest

smoke: $(STAMP)
	$(BIN)/veil run scenarios/smoke.yaml

test: $(STAMP)  ## the default test tier (about 15 minutes on 2 cores; `pytest -m slow` runs the rest)
	$(BIN)/ruff check --no-cache simulator entities reports tests bench
	$(BIN)/mypy simulator entities reports
	$(BIN)/python -m pytest -q

.PHONY: install demo table5 smoke test
