# Care Transitions Hub. `make demo` runs the main job on the embedded stack; `make test` runs every test.
# Both create (or reuse) the virtual environment they need in .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PACKAGES := -e shared -e services/attribution -e services/referrals -e services/care-gaps -e "services/notifications[browser-test]"
SOURCES := requirements-dev.txt shared/pyproject.toml $(wildcard services/*/pyproject.toml)

.PHONY: demo test lint bench stack up down clean browser

# The inbox page's browser test needs Debian's chromium + chromium-driver. Installed when missing and
# apt-get is usable (root); otherwise the browser tests skip and say why.
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	      echo "installing chromium + chromium-driver for the browser tests"; \
	      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) || \
	      echo "could not install chromium: the browser tests will be skipped"; \
	    else echo "chromium missing and apt-get not usable: the browser tests will be skipped"; fi; }

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt $(PACKAGES)
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m cth_shared.demo $(ARGS)

test: $(STAMP) browser
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
