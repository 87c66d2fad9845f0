# The README's two commands: `make test` and `make demo`. Both create or reuse .venv.
SHELL := /bin/bash
VENV := .venv
# First interpreter >= 3.12 that actually runs (pyenv shims can exist without a version).
PYTHON ?= $(shell for p in python3.12 $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) \
            python3.13 $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3.13) python3; do \
            $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null && \
            { echo $$p; break; }; done)
STAMP := $(VENV)/.installed

.PHONY: test demo install clean

$(STAMP): requirements.txt requirements-test.txt setup.py
	@test -n "$(PYTHON)" || { echo "error: need Python >= 3.12 (set PYTHON=...)"; exit 1; }
	@echo "Using $(PYTHON) ($$($(PYTHON) --version))"
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.txt -r requirements-test.txt
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# pytest includes the layering contract of pyproject.toml (tests/test_layering.py).
test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/python -m muse_jax.demo --config=configs/demo_cpu.py --workdir=demo_out

clean:
	rm -rf $(VENV) demo_out
