# Two commands set everything up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test-deps demo test lint clean lab-production gameday

setup: $(STAMP)
	./scripts/install-system-deps.sh

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,controller]'
	touch $(STAMP)

# The test suite also needs sshd, supervisord and iproute2 (lab hosts, as root) and promtool.
test-deps: $(STAMP)
	./scripts/install-system-deps.sh --test

# A ten-minute built-in trace replayed on the real fleet at 20x (about 40 s): P95 against the target.
demo: setup
	$(BIN)/captcha-fleet replay --trace builtin:short --time-scale 0.05

# The lab tests run in three pytests with a lab each, the rest beside them over pytest-xdist workers
# (scripts/run-tests.sh; TEST_LAB_RUNS=1 or 2 for fewer lab runs).
test: setup test-deps
	PYTEST=$(BIN)/pytest ./scripts/run-tests.sh

# A production-shaped lab (Sentinels, ACL users, TLS, controller + standby, three worker hosts; all by site.yml), held
# until Ctrl-C; and the game day on it: faults on a schedule under a trace, judged by the history checker (as root).
lab-production: setup test-deps
	$(BIN)/python -m lab.production up

gameday: setup test-deps
	$(BIN)/python -m lab.gameday --schedule full

# The scripts roles copy to hosts run with the system Python, outside the package: checked as strictly.
ROLE_SCRIPTS := $(wildcard roles/*/files/*.py)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy captcha_fleet lab tests bench $(ROLE_SCRIPTS)
	$(BIN)/lint-imports
	$(BIN)/ansible-lint --profile production playbooks roles

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
