# One entry point for people and CI. `make setup` is idempotent: it reinstalls only when the
# requirement files change.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp

.PHONY: setup lint test test-fast serve bench clean loadtest

setup: $(STAMP)

$(STAMP): requirements/torch.txt requirements/audiocraft.txt requirements/demucs.txt requirements/lock.txt requirements/dev.txt pyproject.toml scripts/install-system-packages.sh
	bash scripts/install-system-packages.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/torch.txt
	# audiocraft 1.3.0 declares torch pins that do not match its real needs: install it alone.
	$(PY) -m pip install --quiet --no-deps -r requirements/audiocraft.txt
	# demucs 4.0.1 (the separator's model classes) requires lameenc, used only by its CLI.
	$(PY) -m pip install --quiet --no-deps -r requirements/demucs.txt
	$(PY) -m pip install --quiet -r requirements/lock.txt -c requirements/torch.txt
	# Test, validation and load-test tools, constrained to the same pins.
	$(PY) -m pip install --quiet -r requirements/dev.txt -c requirements/lock.txt -c requirements/torch.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# ruff (pyflakes, pycodestyle, import order, bugbear, pyupgrade) and mypy, configured in
# pyproject.toml.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

serve: setup
	$(PY) -m cli serve

# Load test against a local stack of real processes (Redis, SeaweedFS, gateway, tiny-model
# workers) that it starts on free loopback ports and stops at the end; run by hand, not in CI.
# Results: var/loadtest/results.md and loadtest.png. Options: LOADTEST_ARGS="--help".
LOADTEST_ARGS ?=
loadtest: setup
	$(PY) -m bench.loadtest.run $(LOADTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
