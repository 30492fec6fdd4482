PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-browser chromium clean bench bench-smoke

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

run: export DEBUG ?= 1
run: $(STAMP)
	$(BIN)/python manage.py migrate --no-input
	$(BIN)/python manage.py ensure_demo_user
	$(BIN)/daphne -b 127.0.0.1 -p 8000 chatproj.asgi:application

test: $(STAMP) chromium
	$(BIN)/python -m pytest
	$(MAKE) --no-print-directory bench-smoke

# Benchmarks (bench/, README "Benchmarks"): the full run takes about 7 minutes here and
# writes bench/results/latest.{json,md} and latency.png; BACKEND=pg runs two workers
# on the local PostgreSQL and Redis (about 12 minutes). The smoke run (under a minute)
# asserts loose goals.
BACKEND ?= sqlite

bench: $(STAMP)
	$(BIN)/python -m bench --backend $(BACKEND)

bench-smoke: $(STAMP)
	$(BIN)/python -m bench --smoke --backend $(BACKEND)

test-browser: $(STAMP) chromium
	$(BIN)/python -m pytest tests/browser

# The browser tests drive Debian's Chromium (Playwright's own browser download is
# not used). Installed when it can be: as root with apt-get; otherwise they skip.
chromium:
	@command -v chromium >/dev/null \
		|| { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
			&& (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium); } \
		|| echo "chromium is not installed: the browser tests will be skipped"

clean:
	rm -rf $(VENV) db.sqlite3 .pytest_cache
