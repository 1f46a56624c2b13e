# Two commands matter: `make demo` and `make test`. Both build .venv from pinned files first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck bench clean

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==25.3"
	$(BIN)/python -m pip install --quiet -c constraints.txt -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/runner-scaler demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy chalicelib toolkit sim infra app.py tests
	$(BIN)/pytest -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python -m sim.bench
	$(BIN)/python -m sim.bench_prewarm
	$(BIN)/python -m sim.bench_never_kill
	$(BIN)/python -m sim.bench_webhooks
	$(BIN)/python -m sim.bench_reconcile
	$(BIN)/python -m sim.bench_cpu_share

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
