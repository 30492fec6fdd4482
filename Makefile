PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --require-hashes
PORT ?= 8000
BACKEND ?= sqlite

.PHONY: install run check test test-fast test-browser chromium bench bench-smoke lock clean

# Three locks, resolved together from pyproject.toml (`make lock`): the server's own
# packages; those plus the test suite's; those plus the full benchmark's.
install: $(VENV)/.runtime

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.runtime: requirements/runtime.txt | $(BIN)/python
	$(PIP) -r requirements/runtime.txt
	touch $@

$(VENV)/.test: requirements/test.txt | $(BIN)/python
	$(PIP) -r requirements/test.txt
	touch $@

$(VENV)/.bench: requirements/bench.txt | $(BIN)/python
	$(PIP) -r requirements/bench.txt
	touch $@

# The development server: SQLite, the in-memory layer, the demo model unless LLM_* say otherwise.
run: export DEBUG ?= 1
run: install
	$(BIN)/python manage.py check
	$(BIN)/python manage.py migrate --no-input
	$(BIN)/python manage.py ensure_demo_user --url http://127.0.0.1:$(PORT)/
	$(BIN)/daphne -b 127.0.0.1 -p $(PORT) chatproj.asgi:application

check: install
	$(BIN)/python manage.py check

test: $(VENV)/.test chromium
	$(BIN)/python -m pytest
	$(MAKE) --no-print-directory bench-smoke

# Everything that starts no process, Redis or browser: well under a minute.
test-fast: $(VENV)/.test
	$(BIN)/python -m pytest -m "not slow"

test-browser: $(VENV)/.test chromium
	$(BIN)/python -m pytest tests/browser

# Benchmarks (bench/, README "Benchmarks"): the full run writes bench/results/latest.*;
# BACKEND=pg runs two workers on the local PostgreSQL and Redis. The smoke run (under a
# minute) asserts loose goals and is the last step of `make test`.
bench: $(VENV)/.bench
	$(BIN)/python -m bench --backend $(BACKEND)

bench-smoke: $(VENV)/.test
	$(BIN)/python -m bench --smoke --backend $(BACKEND)

# The browser tests drive Debian's Chromium (Playwright's own browser download is
# not used). Installed when it can be: as root with apt-get; otherwise they skip.
chromium:
	@command -v chromium >/dev/null \
		|| { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
			&& (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium); } \
		|| echo "chromium is not installed: the browser tests will be skipped"

# After a change of the dependencies in pyproject.toml: the three locks, in a venv of pip-tools' own.
LOCK_TOOLS := .venv-lock
COMPILE := CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_TOOLS)/bin/pip-compile --quiet --generate-hashes --strip-extras --allow-unsafe
lock:
	test -x $(LOCK_TOOLS)/bin/pip-compile || { $(PYTHON) -m venv $(LOCK_TOOLS) && $(LOCK_TOOLS)/bin/pip install --quiet pip-tools; }
	$(COMPILE) --extra test --extra bench -o requirements/bench.txt pyproject.toml
	$(COMPILE) --extra test -c requirements/bench.txt -o requirements/test.txt pyproject.toml
	$(COMPILE) -c requirements/bench.txt -o requirements/runtime.txt pyproject.toml

clean:
	rm -rf $(VENV) $(LOCK_TOOLS) db.sqlite3 db.sqlite3-wal db.sqlite3-shm .pytest_cache
