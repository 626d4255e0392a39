# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing: torch first (pinned; on this workplace the pinned
# CPU build is local), then nncert with its test extras.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.nncert-installed

.PHONY: demo test bench-smoke clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/digits_demo.py --out out/demo

test: $(STAMP)
	$(PY) -m pytest -p no:cacheprovider

clean:
	rm -rf out .pytest_cache
