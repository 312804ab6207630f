#!/usr/bin/env bash
# The GPU check, run from the repository root on a machine with a CUDA GPU, torch with CUDA,
# nvcc, ninja, pytest, pytest-benchmark and triton installed (no network needed):
#
#     bash bench/gpu_check.sh            # results under $OUT (default gpu-results/)
#
# Builds the extension in place for the visible GPU, runs the GPU tests (tests/cuda and the
# Triton tests, compiled on the GPU) and every benchmark suite, and keeps logs and the
# pytest-benchmark JSON. Copy the figures you keep into bench/RESULTS.md with the card's name.
set -o pipefail
export PYTHONUNBUFFERED=1 CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} MAX_JOBS=${MAX_JOBS:-16}
PYTHON=${PYTHON:-python3}
R=${OUT:-gpu-results}
mkdir -p "$R"
nvidia-smi -L
"$PYTHON" -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -20 || exit 1
"$PYTHON" -c "import gfkernels, json; print(json.dumps(gfkernels.build_info(), indent=1))" || exit 1
"$PYTHON" -m pytest -q tests/cuda tests/test_crop_resize_triton.py tests/test_early_exit.py \
    tests/test_crop_resize.py 2>&1 | tee "$R/gpu-tests.log" | tail -40
"$PYTHON" -m pytest -q bench --benchmark-only --benchmark-json="$R/gpu-bench.json" 2>&1 \
    | tee "$R/gpu-bench.log" | tail -60
