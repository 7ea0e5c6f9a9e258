# Everything a fresh machine needs (Python, pip, a C++ compiler; nvcc optional) is installed from here.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The extension is built without isolation, against the venv's jaxlib headers, so pyproject.toml's
# [build-system] requirements go in first; runtime, test and benchmark dependencies come from
# pyproject.toml itself (extras test, bench).
BUILD_DEPS := "scikit-build-core>=0.10" "nanobind>=2.4" "cmake>=3.24" ninja "jax>=0.10" "jaxlib>=0.10"
NATIVE_SRC := $(shell find cuda -type f 2>/dev/null) CMakeLists.txt pyproject.toml

.PHONY: demo test install peer gpu-check gpu-bundle bench bench-quick bench-e2e clean

demo: $(VENV)/.installed
	$(PY) examples/generate_opt.py

test: $(VENV)/.installed
	$(PY) -m pytest -q

install: $(VENV)/.installed

# Re-run when the dependency lists change (cheap when everything is already installed).
$(VENV)/.deps: Makefile pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(BUILD_DEPS)
	touch $@

# Editable install with a fixed CMake build dir (pyproject.toml): re-running only rebuilds what changed.
# CMAKE_ARGS in the environment reaches CMake (e.g. CMAKE_ARGS=-DCMAKE_CUDA_ARCHITECTURES=90-real).
$(VENV)/.installed: $(VENV)/.deps $(NATIVE_SRC)
	$(PIP) install -q --no-build-isolation -e ".[test,bench]"
	touch $@

# The benchmarks' PyTorch / transformers peers (the pinned extra `peer`: torch 2.13.0, transformers 5.24.0),
# never part of `make test`; each benchmark runs them in a process of their own.
peer: $(VENV)/.installed
	$(PIP) install -q --no-build-isolation -e ".[test,bench,peer]"

# Here, no GPU needed: build/gpu-bundle/ for a GPU machine (harness, goldens from the emulation, run.sh).
gpu-bundle: $(VENV)/.installed
	PYTHON=$(PY) bash scripts/make_gpu_bundle.sh

# On a GPU machine with no network where jax[cuda], flax, nanobind, scikit-build-core, cmake and ninja
# are already installed (docs/gpu.md): step 1 the bundle, step 2 the JAX path (build in place for
# this GPU, pytest -m gpu, a short benchmark), step 3 opt-1.3b end to end against HF on CUDA; within 10 minutes.
gpu-check:
	bash scripts/gpu_check.sh

bench-quick: $(VENV)/.installed
	$(PY) -m benchmarks.spmm --quick

bench: $(VENV)/.installed
	$(PY) -m benchmarks.spmm

# The end-to-end benchmark against HF transformers + PyTorch (the `peer` target's extra).
bench-e2e: peer
	$(PY) -m benchmarks.e2e --quick

clean:
	rm -rf build $(VENV) *.egg-info
