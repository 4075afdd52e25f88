# mmrepvgg: one command from a clean clone to a working environment, tests and demos.
# `make test` is the README's (and CI's) test command.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
REQ := requirements
# every package version verified together, transitive ones included
CONSTRAINTS := $(REQ)/constraints.txt

.PHONY: env test configs-full demo demo-cls demo-int8
.DEFAULT_GOAL := test

env: $(VENV)/.stamp-env

$(VENV)/.stamp-venv:
	$(PYTHON) -m venv $(VENV)
	touch $@

# torch and the build tools first: mmcv's ops are compiled against this torch
$(VENV)/.stamp-torch: $(VENV)/.stamp-venv $(REQ)/torch.txt $(REQ)/build.txt
	$(PIP) install -c $(CONSTRAINTS) -r $(REQ)/torch.txt -r $(REQ)/build.txt
	touch $@

# built once per machine and cached as a wheel (12-15 min on 2 cores the first time, seconds after)
$(VENV)/.stamp-mmcv: $(VENV)/.stamp-torch tools/build_mmcv.sh
	bash tools/build_mmcv.sh $(PY)
	touch $@

$(VENV)/.stamp-env: $(VENV)/.stamp-mmcv $(REQ)/runtime.txt $(REQ)/deploy.txt $(REQ)/tests.txt \
		$(CONSTRAINTS) setup.py
	$(PIP) install -c $(CONSTRAINTS) -r $(REQ)/runtime.txt -r $(REQ)/deploy.txt -r $(REQ)/tests.txt
	$(PIP) install --no-build-isolation --no-deps -e .
	touch $@

# on every core, one worker per core each on one thread (more threads only contend for the
# cores); each test file runs whole in one worker (its session fixtures made once)
test: env
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest tests -n auto --dist loadfile

# every shipped config at full size, as written (tests/configs/test_run_configs.py without the
# shrunk backbone: one iteration, one val and one test image; docs/configs.md gives its time)
configs-full: env
	MMREPVGG_CONFIGS_FULL=1 $(PY) -m pytest tests/configs/test_run_configs.py tests/configs/test_run_imagenet_configs.py -p no:cacheprovider

demo: env
	$(PY) tools/demo.py

demo-cls: env
	$(PY) tools/demo_cls.py

demo-int8: env
	$(PY) tools/demo_int8.py
