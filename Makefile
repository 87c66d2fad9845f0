# The README's two commands: `make test` and `make demo`. Both create or reuse .venv.
# `make install` installs the pinned stack and muse_jax (editable) into .venv: with ACCEL=cpu
# (the default) JAX on CPU, TensorFlow (requirements-tf.txt; the tests write TFRecord and TFDS
# fixtures with it) and the test requirements; with ACCEL=cuda or ACCEL=tpu JAX's GPU or TPU
# build (setup.py's extras) and no test requirements, whose PyTorch would bring its own CUDA.
# TF=1 adds TensorFlow there (the `tf` extra), for the tfds and tfrecord precompute sources, the
# data.reader=tf reader and TFDS caption sets; nothing else needs it.
SHELL := /bin/bash
ACCEL ?= cpu
TF ?= 0
VENV := .venv
# First interpreter >= 3.12 that actually runs (pyenv shims can exist without a version).
PYTHON ?= $(shell for p in python3.12 $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) \
            python3.13 $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3.13) python3; do \
            $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null && \
            { echo $$p; break; }; done)
STAMP := $(VENV)/.installed
PIP := $(VENV)/bin/pip install -q --disable-pip-version-check

.PHONY: test demo install clean

$(VENV)/bin/python:
	@test -n "$(PYTHON)" || { echo "error: need Python >= 3.12 (set PYTHON=...)"; exit 1; }
	@echo "Using $(PYTHON) ($$($(PYTHON) --version))"
	$(PYTHON) -m venv $(VENV)

# libtpu (the version jax[tpu]==0.11.2 pins) goes to its own folder, $(LIBTPU), not onto the
# venv's path: tests/training/test_aot.py puts it on the path of its compile subprocesses only.
# In the venv itself, every JAX start on a CPU host would print libtpu's warnings.
LIBTPU := $(VENV)/libtpu
$(STAMP): requirements.txt requirements-tf.txt requirements-test.txt setup.py | $(VENV)/bin/python
	$(PIP) -r requirements.txt -r requirements-tf.txt -r requirements-test.txt
	$(PIP) --no-deps -e .
	$(PIP) --no-deps --upgrade --target $(LIBTPU) libtpu==0.0.48.1
	touch $(STAMP)

# One stamp per accelerator and TF: TF=1 makes .installed-cuda-tf, which installs ".[cuda,tf]".
ACCEL_STAMPS := $(foreach a,cuda tpu,$(STAMP)-$(a) $(STAMP)-$(a)-tf)
COMMA := ,
$(ACCEL_STAMPS): $(STAMP)-%: requirements.txt requirements-tf.txt setup.py | $(VENV)/bin/python
	$(PIP) -r requirements.txt -e ".[$(subst -,$(COMMA),$*)]"
	touch $@

ifeq ($(filter 0 1,$(TF)),)
install:
	@echo "error: TF=$(TF); use TF=1 (add TensorFlow) or TF=0"; exit 2
else ifeq ($(ACCEL),cpu)
install: $(STAMP)
else ifneq ($(filter cuda tpu,$(ACCEL)),)
install: $(STAMP)-$(ACCEL)$(if $(filter 1,$(TF)),-tf)
	@$(VENV)/bin/python -c 'import jax; print("jax", jax.__version__, "backend:", \
	  jax.default_backend(), jax.device_count(), "devices")'
else
install:
	@echo "error: ACCEL=$(ACCEL); use ACCEL=cpu, cuda or tpu"; exit 2
endif

# pytest includes the layering contract of pyproject.toml (tests/test_layering.py). Most tests
# are single-threaded XLA compiles and subprocess start-ups, so one worker per core (xdist)
# shortens the run; --durations lists the slowest tests.
test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n auto --dist=loadfile --durations=30

demo: $(STAMP)
	$(VENV)/bin/python -m muse_jax.demo --config=configs/demo_cpu.py --workdir=demo_out

clean:
	rm -rf $(VENV) demo_out
