# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint unit interop install interop-deps bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/acme-ca serve $(ARGS)

interop-deps:
	bash scripts/install-interop-deps.sh

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy
	$(BIN)/lint-imports

test: $(STAMP) interop-deps lint
	$(BIN)/pytest -p no:cacheprovider $(PYTEST_ARGS)

unit: $(STAMP) lint
	$(BIN)/pytest -p no:cacheprovider -m "not interop" $(PYTEST_ARGS)

interop: $(STAMP) interop-deps
	$(BIN)/pytest -p no:cacheprovider -m interop $(PYTEST_ARGS)

bench: $(STAMP)
	bash benchmarks/compare.sh

clean:
	rm -rf $(VENV) .venv-certbot .mypy_cache .ruff_cache .pytest_cache
