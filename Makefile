# Junction: two commands on a fresh Debian machine with Python 3.11 (as root):
#   make demo   -- create .venv, install, run the built-in demo with a live view
#   make test   -- create .venv, install test needs (and mosquitto, chromium), lint, run the suite

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install lint typecheck pytest mosquitto browser bench clean

$(STAMP): pyproject.toml plugins_example/pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Junction needs Python 3.11+"'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
	  echo "python3 -m venv failed: installing python3-venv"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv \
	  && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pip install -q -e plugins_example
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/junction demo

# The MQTT tests start their own mosquitto on a free port; install the Debian package if missing.
mosquitto:
	@if ! command -v mosquitto >/dev/null 2>&1 && ! test -x /usr/sbin/mosquitto; then \
	  echo "mosquitto not found: installing the Debian package"; \
	  if [ "$$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq mosquitto; \
	fi

# The web console's browser tests (tests/test_console_browser.py) drive Debian's chromium
# through Playwright (never a browser Playwright downloads); install it if missing.
browser:
	@if ! test -x /usr/bin/chromium; then \
	  echo "chromium not found: installing the Debian package (for the console's browser tests)"; \
	  if [ "$$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    chromium fonts-dejavu-core \
	  || echo "could not install chromium: the browser tests will be skipped"; \
	fi

lint: install
	$(BIN)/ruff check broker adapters tests bench plugins_example
	$(BIN)/ruff format --check broker adapters tests bench plugins_example

typecheck: install
	$(BIN)/mypy broker adapters plugins_example/junction_example

pytest: install mosquitto browser
	$(BIN)/python -m pytest

test: lint typecheck pytest

bench: install
	$(BIN)/python bench/core.py

clean:
	rm -rf $(VENV) state .pytest_cache .mypy_cache .ruff_cache *.egg-info
