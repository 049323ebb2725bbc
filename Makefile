# Care Transitions Hub. `make demo` runs the main job on the embedded stack; `make test` runs every test.
# Both create (or reuse) the virtual environment they need in .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PACKAGES := -e shared -e services/attribution -e services/referrals -e services/care-gaps -e services/notifications
SOURCES := requirements-dev.txt shared/pyproject.toml $(wildcard services/*/pyproject.toml)

.PHONY: demo test lint bench stack up down clean

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt $(PACKAGES)
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m cth_shared.demo $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy shared/src/cth_shared/contracts

bench: $(STAMP)
	$(PY) -m bench $(ARGS)

stack: $(STAMP)
	$(VENV)/bin/cth-stack up

up:
	docker compose up -d --wait

down:
	docker compose down

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
