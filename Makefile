# The project's commands. `make test` and `make demo` work from a fresh clone: they create
# .venv, install the pinned dependencies and build the package first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# nvcc lives here on our machines; setup.py compiles the CUDA kernels whenever a toolkit
# matching torch's CUDA is found (GFKERNELS_CUDA=0 turns them off; =gpu, as `make demo` sets it,
# builds them only where torch sees a GPU).
export CUDA_HOME ?= /usr/local/cuda
export MAX_JOBS ?= 2

TORCH_PINS := torch==2.14.1 torchvision==0.29.1
DEPS := "setuptools>=77" wheel numpy pybind11 ninja cmake pytest pytest-benchmark fvcore \
        tqdm matplotlib pyyaml scikit-learn timm
STAMP := $(VENV)/.deps-installed

.PHONY: all deps build test test-cpp test-py bench gpu-report gpu-check gpu-check-dry-run gpu-site demo clean

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

# Registers, spills and shared memory of every GPU kernel, without a GPU: the sm_90 code of the
# built extension (cuobjdump), and every Triton kernel compiled ahead of time for sm_90.
gpu-report: build
	env -u TRITON_INTERPRET $(PY) -m bench.gpu_report

# On a GPU machine (no network, no fvcore needed): build for the card with the CUDA kernels
# required, the GPU tests, sync-debug and compute-sanitizer passes, the GPU benchmarks and the
# register report, each step under its own timeout, in at most 8 minutes; logs and summary.md
# under $(OUT) (default gpu-results/). Uses the python on PATH, as the GPU image has no venv.
gpu-check:
	bash bench/gpu_check.sh

# fvcore and its pure-Python needs that the GPU image lacks, copied from the venv into gpu-site/
# (ignored by git): name gpu-site in the device run's carry and gpu_check.sh puts it on the path,
# so that the GPU benchmarks state their FLOPs-predicted targets.
GPU_SITE_PACKAGES = fvcore iopath yacs termcolor
gpu-site: deps
	rm -rf gpu-site && mkdir -p gpu-site
	site=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') && \
	    for p in $(GPU_SITE_PACKAGES); do cp -r "$$site/$$p" gpu-site/; done
	find gpu-site -name __pycache__ -prune -exec rm -rf {} +

# The same script's steps that need no GPU, with fvcore hidden (what CI runs).
gpu-check-dry-run: build
	PYTHON=$(PY) bash bench/gpu_check.sh --dry-run

# The main job: GFNet on the embedded cluttered-digits data set (three stages), its static
# baseline, every budget evaluated, then runs/demo/report.md with the accuracy-vs-FLOPs
# table and plot, realised throughput and pictures of the patches. Re-running reuses finished
# stages and stored thresholds. DEMO_ARGS passes more options to `gfnet demo` (see --help).
DEMO_OUT ?= runs/demo
DEMO_ARGS ?=
# The demo builds the CUDA kernels only where torch sees a GPU: on a CPU machine they would cost a
# minute of compiling (about half the build) for nothing. `make test` builds them (a rebuild).
demo: export GFKERNELS_CUDA ?= gpu
demo: build
	$(PY) -m gfnet demo --out $(DEMO_OUT) $(DEMO_ARGS)

clean:
	rm -rf build dist *.egg-info gfkernels/_C*.so
