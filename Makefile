# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing: torch first (pinned; on this workplace the pinned
# CPU build is local), then nncert with its test and demo extras (matplotlib draws the
# training example's plot).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.nncert-installed

.PHONY: demo test bench-smoke clean

# Recipes are silent (@): `make demo` prints the demo's results, `make test` pytest's
# report, and a fresh machine one line while the environment is installed.
PIP := $(PY) -m pip install -qq --disable-pip-version-check  # -qq: errors only

$(STAMP): pyproject.toml Makefile
	@echo "installing $(VENV): torch==2.13.0, then nncert with its test and demo extras (a few minutes)"
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PIP) --upgrade pip
	@$(PIP) torch==2.13.0
	@$(PIP) -e '.[test,demo]'
	@# VNN-LIB 2.0's own parser, beside the venv: its package is named vnnlib like ours (vnnlib/standard.py)
	@$(PIP) --target $(VENV)/nncert-vendor/vnnlib-std --upgrade vnnlib==1.0.2
	@touch $(STAMP)

demo: $(STAMP)
	@$(PY) examples/digits_demo.py --out out/demo

# Two pytest-xdist workers of one torch thread each (tests/conftest.py): the suite in about
# half the time of one process on a 2-core machine.
test: $(STAMP)
	@$(PY) -m pytest -p no:cacheprovider -n 2

clean:
	@rm -rf out .pytest_cache
