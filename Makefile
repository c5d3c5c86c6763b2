# Every target sets up .venv itself, so each works on a fresh machine.
#   make test                 create .venv, install torch==$(TORCH_PIN) (CPU), build, run the tests
#   make test TORCH=system    use the torch your Python already has (a venv that sees system site-packages)
#   make demo                 train on the embedded digits halves and print the metrics
#   make bench                microbenchmarks (ratios, one run), see benchmarks/RESULTS.md
#   make cuda-check           compile every .cu file for sm_90 with nvcc (no GPU needed)

PYTHON ?= python3
VENV ?= .venv
TORCH ?= pinned
TORCH_PIN ?= 2.13.0
PY := $(VENV)/bin/python
SOURCES := $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu csrc/cuda/*.cuh) setup.py pyproject.toml

.PHONY: test demo bench cuda-check clean

$(VENV)/.created:
ifeq ($(TORCH),system)
	$(PYTHON) -m venv --system-site-packages $(VENV)
else
	$(PYTHON) -m venv $(VENV)
endif
	$(PY) -m pip install -q --upgrade pip setuptools wheel ninja numpy
ifneq ($(TORCH),system)
	$(PY) -m pip install -q torch==$(TORCH_PIN)
endif
	touch $@

# Rebuilds only when a source or the build configuration changed.
$(VENV)/.installed: $(VENV)/.created $(SOURCES)
	$(PY) -m pip install -q --no-build-isolation -e ".[test]"
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

demo: $(VENV)/.installed
	$(PY) -m twoway_fast demo

bench: $(VENV)/.installed
	$(PY) -m pytest -q benchmarks --benchmark-only --benchmark-columns=min,median,mean,rounds

clean:
	rm -rf build *.egg-info twoway_fast/_C*.so twoway_fast/_build_info.py
