# The project's commands. `make test` and `make demo` work from a fresh clone: they create
# .venv, install the pinned dependencies and build the package first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# nvcc lives here on our machines; setup.py compiles the CUDA kernels whenever a toolkit
# matching torch's CUDA is found (GFKERNELS_CUDA=0 turns them off).
export CUDA_HOME ?= /usr/local/cuda
export MAX_JOBS ?= 2

TORCH_PINS := torch==2.14.1 torchvision==0.29.1
DEPS := "setuptools>=77" wheel numpy pybind11 ninja cmake pytest pytest-benchmark fvcore \
        tqdm matplotlib pyyaml scikit-learn
STAMP := $(VENV)/.deps-installed

.PHONY: all deps build test test-cpp test-py bench demo clean

all: test

$(STAMP): Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS) $(DEPS)
	touch $@

deps: $(STAMP)

# Editable install: object files persist under build/temp, so rebuilds are incremental.
build: deps
	$(PIP) install -q --no-build-isolation --no-deps -e .
	$(PY) -c "import gfkernels, json; print(json.dumps(gfkernels.build_info(), indent=1))"

test-cpp: deps
	$(VENV)/bin/cmake -S . -B build/cmake -G Ninja -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV))/bin/ninja
	$(VENV)/bin/cmake --build build/cmake
	$(VENV)/bin/ctest --test-dir build/cmake --output-on-failure

# Triton kernels run on CPU tensors under its interpreter; tests/cuda skips without a GPU.
test-py: build
	TRITON_INTERPRET=1 $(PY) -m pytest tests

test: test-cpp test-py

bench: build
	mkdir -p bench/results
	$(PY) -m pytest bench --benchmark-only --benchmark-json=bench/results/latest.json \
	    --benchmark-columns=min,median,mean,rounds

# The main job: GFNet on the embedded cluttered-digits data set, all three stages, then the
# budgeted evaluation with the dynamic early-exit engine (about 12 minutes on 2 CPU cores).
# Re-running resumes: finished stages are not trained again, stored thresholds are reused.
DEMO_OUT ?= runs/demo
demo: build
	$(PY) -m gfnet train --preset digits --stage all --out $(DEMO_OUT) \
	    $$(test -d $(DEMO_OUT) && echo --resume)
	$(PY) -m gfnet eval $(DEMO_OUT)
	@echo "accuracy vs average MACs per budget: $(DEMO_OUT)/eval/eval.png (and .csv, .json)"

clean:
	rm -rf build dist *.egg-info gfkernels/_C*.so
