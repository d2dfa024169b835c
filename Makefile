# make demo: set-up, then the main job (the quick benchmark, its table printed).
# make test: set-up, then the whole test suite. Both reuse .venv/ and build/ when run again.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU torch: the 2.13.0 build on this machine's disk; a plain `torch` would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
DEPS := $(TORCH_SPEC) "triton>=3.6" numpy "scikit-build-core>=0.10" "pybind11>=2.12" cmake ninja pytest pytest-benchmark \
	pytest-xdist matplotlib
# Test processes: the suite in two workers took 9.3 min on the 2-core dev VM where one took 14.3.
TEST_WORKERS ?= 2
SOURCES := $(shell find csrc kernels python -type f \( -name '*.py' -o -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' \) 2>/dev/null) CMakeLists.txt pyproject.toml

.PHONY: setup build test demo bench info clean

setup: $(VENV)/.deps-stamp
build: $(VENV)/.build-stamp

$(VENV)/.deps-stamp: Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check $(DEPS)
	touch $@

# Editable install: Python edits are live; C++/CUDA edits rebuild here (build/ is kept, so incrementally).
$(VENV)/.build-stamp: $(VENV)/.deps-stamp $(SOURCES)
	$(PIP) install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
	touch $@

test: build
	$(PY) -m pytest -q -ra -n $(TEST_WORKERS) tests

demo: build
	$(PY) -m crossfuse info
	$(PY) -m crossfuse.bench --quick

bench: build
	$(PY) -m crossfuse.bench

info: build
	$(PY) -m crossfuse info

clean:
	rm -rf build $(VENV) .pytest_cache
