# Two entry points (README): `make run` and `make test`. Both create .venv when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
STUDY  ?= default
ARGS   ?=

.PHONY: venv run test lint bench clean-results

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 'setuptools<81' wheel
	# torch first, from the machine's local wheels (a plain resolve would download GBs)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

run: venv
	$(VENV)/bin/convergence all study=$(STUDY) $(ARGS)

test: venv
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -p no:cacheprovider; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks

bench: venv
	$(PY) benchmarks/bench_samplers.py

clean-results:
	rm -rf results/$(STUDY)
