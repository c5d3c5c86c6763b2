# Every target sets up .venv itself, so each works on a fresh machine.
#   make test                 create .venv, install torch==$(TORCH_PIN) (CPU), build, run the tests
#   make test TORCH=system    use the torch your Python already has (a venv that sees system site-packages)
#   make demo                 train on the embedded digits halves and print the metrics
#   make bench                microbenchmarks (ratios, one run), see benchmarks/RESULTS.md
#   make cuda-check           compile every .cu file for sm_90 with nvcc (no GPU needed)
#   make sanitize             the op tests against an -fsanitize=address,undefined build (build/sanitize)
#   make docs                 the API reference from the docstrings (pdoc) in build/docs
#   make sdist-check          build the sdist, install it in a fresh venv with torch, import it, run an op (slow)

PYTHON ?= python3
VENV ?= .venv
TORCH ?= pinned
TORCH_PIN ?= 2.13.0
PY := $(VENV)/bin/python
SOURCES := $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu csrc/cuda/*.cuh) setup.py pyproject.toml

.PHONY: test demo bench cuda-check sanitize docs sdist-check clean

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

# Compiles every csrc/cuda/*.cu for sm_90 against the venv's torch headers, on a machine without a GPU
# (or a CUDA torch). The system CUDA lacks the cuBLAS/cuSPARSE/cuSOLVER/cuRAND headers that ATen's CUDA
# headers include: their folders come from the pinned nvidia-* wheels (CUDA 13.0), unpacked once.
# Objects are only checked, never linked; each is rebuilt when its source or a header changes.
NVCC ?= /usr/local/cuda-13.0/bin/nvcc
CUDA_CHECK_DIR := build/cuda-check
CUDA_HEADERS := $(VENV)/cuda-headers
CUDA_HEADER_WHEELS := nvidia-cublas==13.0.2.14 nvidia-cusparse==12.6.3.3 nvidia-cusolver==12.0.4.66 \
                      nvidia-curand==10.4.0.35
CU_OBJECTS := $(patsubst csrc/cuda/%.cu,$(CUDA_CHECK_DIR)/%.o,$(wildcard csrc/cuda/*.cu))
TORCH_DIR = $(shell $(PY) -c "import importlib.util as u; print(u.find_spec('torch').submodule_search_locations[0])")
# C++20, as torch >= 2.13's cpp_extension builds (2.11 chooses C++17: the sources compile under both).
NVCC_FLAGS = -std=c++20 -O3 -gencode arch=compute_90,code=sm_90 --expt-relaxed-constexpr \
  -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE -DTWOWAY_WITH_CUDA -DTORCH_EXTENSION_NAME=_C \
  -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
  -D__CUDA_NO_HALF2_OPERATORS__ -Icsrc -I$(TORCH_DIR)/include -I$(TORCH_DIR)/include/torch/csrc/api/include \
  -I$(CUDA_HEADERS)/nvidia/cu13/include

$(CUDA_HEADERS)/.unpacked: $(VENV)/.created
	$(PY) -m pip download -q --no-deps -d $(VENV)/cuda-wheels $(CUDA_HEADER_WHEELS)
	for wheel in $(VENV)/cuda-wheels/*.whl; do unzip -qo "$$wheel" 'nvidia/*/include/*' -d $(CUDA_HEADERS); done
	rm -rf $(VENV)/cuda-wheels  # only the headers are needed
	touch $@

$(CUDA_CHECK_DIR)/%.o: csrc/cuda/%.cu $(wildcard csrc/*.h csrc/cuda/*.cuh) $(CUDA_HEADERS)/.unpacked Makefile
	@mkdir -p $(CUDA_CHECK_DIR)
	$(NVCC) $(NVCC_FLAGS) -c $< -o $@

cuda-check: $(CU_OBJECTS)
	@echo "cuda-check: $(words $(CU_OBJECTS)) CUDA source(s) compile for sm_90"

# The op tests against twoway_fast._C built with -fsanitize=address,undefined (setup.py's
# TWOWAY_SANITIZE=1), in a copy of the tree under build/sanitize so the normal build is untouched.
# Python itself is not instrumented: libasan is preloaded so it comes first (with libstdc++, or ASan
# cannot find the real __cxa_throw when a TORCH_CHECK throws), and leak detection is off (CPython and
# torch keep allocations alive until exit by design). Any ASan or UBSan report fails the run; pytest
# captures only sys.stdout/stderr so the report reaches the terminal. torch is imported before _C: the package
# no longer imports it on import (lazy imports), and _C finds libc10.so only once torch has loaded it.
SANITIZE_DIR := build/sanitize
SANITIZE_TESTS ?= tests/test_hidden_block.py tests/test_twoway_net.py tests/test_twoway_loss.py \
  tests/test_training_parity.py tests/test_retrieval_ranks.py tests/test_properties.py tests/test_twoway_step.py \
  tests/test_op_arguments.py
SANITIZE_ENV = LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libstdc++.so)" \
  ASAN_OPTIONS=detect_leaks=0 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 PYTHONPATH=.

# The C++ is rebuilt when a source changes; Python files (every subpackage's) and tests are copied afresh
# on every run, the old copies removed first (a module moved away must not linger there).
$(SANITIZE_DIR)/.built: $(VENV)/.created $(SOURCES)
	rm -rf $(SANITIZE_DIR) && mkdir -p $(SANITIZE_DIR)
	cp -r setup.py pyproject.toml README.md csrc twoway_fast $(SANITIZE_DIR)/
	rm -f $(SANITIZE_DIR)/twoway_fast/_C*.so $(SANITIZE_DIR)/twoway_fast/_build_info.py
	cd $(SANITIZE_DIR) && TWOWAY_SANITIZE=1 FORCE_CUDA=0 $(abspath $(PY)) setup.py -q build_ext --inplace
	touch $@

sanitize: $(SANITIZE_DIR)/.built
	rm -rf $(SANITIZE_DIR)/tests && cp -r tests $(SANITIZE_DIR)/
	cp -r twoway_fast/presets $(SANITIZE_DIR)/twoway_fast/
	find $(SANITIZE_DIR)/twoway_fast -name '*.py' ! -path $(SANITIZE_DIR)/twoway_fast/_build_info.py -delete
	find twoway_fast -name '*.py' ! -path twoway_fast/_build_info.py -exec cp --parents {} $(SANITIZE_DIR)/ \;
	cd $(SANITIZE_DIR) && $(SANITIZE_ENV) $(abspath $(PY)) -c \
	  "import torch, twoway_fast._C as c, sys; sys.exit(0 if '/$(SANITIZE_DIR)/' in c.__file__ else 'not the sanitized build: ' + c.__file__)"
	cd $(SANITIZE_DIR) && $(SANITIZE_ENV) $(abspath $(PY)) -m pytest -q -p no:cacheprovider --capture=sys $(SANITIZE_TESTS)

# The API reference: pdoc renders every public module's docstrings as a static site
# (build/docs/index.html); any pdoc warning fails the target (scripts/build_docs.py).
docs: $(VENV)/.installed
	$(PY) -m pip install -q pdoc
	rm -rf build/docs
	$(PY) scripts/build_docs.py build/docs

# The sdist as a user gets it: built from this tree, installed into a fresh venv that has the pinned torch
# (and nothing of this tree), then scripts/sdist_smoke.py run there from outside the tree. Slow (it
# compiles the extension again): CI runs it after `make test`.
SDIST_DIR := build/sdist-check
sdist-check: $(VENV)/.created
	rm -rf $(SDIST_DIR) && mkdir -p $(SDIST_DIR)
	$(PY) -m pip install -q build
	$(PY) -m build --sdist --no-isolation -o $(SDIST_DIR) .
	rm -rf twoway_fast.egg-info  # the sdist's by-product: its metadata (torch>=2.11) must not shadow the install's
	$(PYTHON) -m venv $(SDIST_DIR)/venv
	$(SDIST_DIR)/venv/bin/python -m pip install -q setuptools wheel ninja torch==$(TORCH_PIN)
	FORCE_CUDA=0 $(SDIST_DIR)/venv/bin/python -m pip install -q --no-build-isolation $(SDIST_DIR)/twoway_fast-*.tar.gz
	cd $(SDIST_DIR) && venv/bin/python $(abspath scripts/sdist_smoke.py)

clean:
	rm -rf build *.egg-info twoway_fast/_C*.so twoway_fast/_build_info.py
