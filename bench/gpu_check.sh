#!/usr/bin/env bash
# The GPU check: everything a GPU machine should bring back, in one run of at most 8 minutes,
# from a fresh working tree, with no network (torch with CUDA, nvcc, ninja, pytest,
# pytest-benchmark and triton installed; fvcore not needed):
#
#     bash bench/gpu_check.sh             # on the GPU machine (make gpu-check)
#     bash bench/gpu_check.sh --dry-run   # on a CPU: every step that needs no GPU (CI)
#
# Results go to $OUT (default gpu-results/): one log per step, summary.md (each step's status,
# time and log, written after every step so a cut-off run still has it), build_info.json,
# bench.json and bench/summary.md (pytest-benchmark JSON and the ratios), gpu_report.md/.json.
# Steps, in order of value (each under its own timeout, all under GPU_CHECK_BUDGET_S, default
# 480 s: a step that would start past it is skipped as out of time; a failing step never stops
# the later ones; GPU_CHECK_SKIP="tests bench" skips named steps, e.g. in a second run):
#   device      nvidia-smi, torch / CUDA / nvcc / compute-sanitizer versions
#   build       pip install -e . for the visible card's arch (GPU_CHECK_ARCH overrides it) with
#               GFKERNELS_CUDA=1: fails, with setup.py's reason in summary.md, unless the CUDA
#               kernels were built; build_info.json, pip.out (pip's own output)
#   sync-debug  the engine and the crop ops under torch.cuda.set_sync_debug_mode("error"):
#               one host sync per engine step and none elsewhere (bench/gpu_sync_check.py)
#   tests       tests/cuda, the Triton tests compiled for the GPU, the engine's GPU test
#   bench       the GPU benchmarks: bench.json and bench/summary.md (GPU_CHECK_BENCH names other
#               files, e.g. in a second run)
#   profile     host, wall and kernel time per call of every benchmarked workload, and its
#               slowest kernels (bench/gpu_profile.py): profile.md, profile.json
#   memcheck, racecheck, synccheck
#               compute-sanitizer over every CUDA op once (bench/gpu_sanitize_ops.py); skipped,
#               saying so, where no compute-sanitizer is found
#   gpu-report  registers, spills and shared memory of every kernel (bench/gpu_report.py)
# --dry-run (fvcore hidden, as on the GPU machine): device without nvidia-smi; build as the
# decision setup.py takes (no compile) and the installed build_info; tests and bench collected
# (bench also runs one small CPU case, for bench.json and summary.md); sync-debug, the profile
# (its op cases) and the sanitizer's op script on the CPU; the sanitizers skipped; the report's CUDA part when the
# installed extension has sm_90 code. Exit status: 0 when no step failed.
set -u -o pipefail
cd "$(dirname "$0")/.."
DRY_RUN=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $arg (use --dry-run or --help)" >&2; exit 2 ;;
    esac
done
export PYTHONUNBUFFERED=1 CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
PYTHON=${PYTHON:-python3}
R=${OUT:-gpu-results}
mkdir -p "$R"
R=$(cd "$R" && pwd)
BUDGET=${GPU_CHECK_BUDGET_S:-480}
START=$SECONDS
SUMMARY="$R/summary.md"
ROWS=()
FAILED=0
if [ "$DRY_RUN" = 1 ]; then
    # the GPU machine has no fvcore: hide it, to see what would break there
    export PYTHONPATH="$PWD/bench/without_fvcore${PYTHONPATH:+:$PYTHONPATH}"
elif [ -d gpu-site ]; then
    # fvcore and its needs, carried from a venv (make gpu-site): the FLOPs-predicted targets
    export PYTHONPATH="$PWD/gpu-site${PYTHONPATH:+:$PYTHONPATH}"
fi

write_summary() {
    {
        echo "# GPU check $([ "$DRY_RUN" = 1 ] && echo '(dry run, CPU)')"
        echo
        echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(hostname), budget ${BUDGET} s, $((SECONDS - START)) s used"
        echo
        echo "| step | status | seconds | log | note |"
        echo "|---|---|---:|---|---|"
        printf '%s\n' "${ROWS[@]}"
    } > "$SUMMARY"
}

# step NAME TIMEOUT NOTE COMMAND...: runs COMMAND (bash -c) under `timeout`, its output in
# NAME.log; the timeout is cut to what is left of the budget.
step() {
    local name=$1 limit=$2 note=$3 cmd=$4 log="$R/$1.log" left status begin rc
    if [[ " ${GPU_CHECK_SKIP:-} " == *" $name "* ]]; then
        skip "$name" "GPU_CHECK_SKIP"
        return 0
    fi
    left=$((BUDGET - (SECONDS - START) - 5))
    if [ "$left" -lt 15 ]; then
        echo "skipped: out of time (budget ${BUDGET} s)" > "$log"
        ROWS+=("| $name | skipped | 0 | $name.log | out of time (budget ${BUDGET} s) |")
        write_summary
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (timeout ${limit} s)"
    begin=$SECONDS
    { echo "\$ $cmd"; echo; } > "$log"
    timeout --kill-after=10 "$limit" bash -c "$cmd" >> "$log" 2>&1
    rc=$?
    if [ "$rc" = 0 ]; then status=ok
    elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status="TIMEOUT (${limit} s)"; FAILED=1
    else status="FAILED (exit $rc)"; FAILED=1
    fi
    if [ "$rc" != 0 ] && [ -f "$R/$name.reason" ]; then note="$note; $(cat "$R/$name.reason")"; fi
    ROWS+=("| $name | $status | $((SECONDS - begin)) | $name.log | $note |")
    write_summary
    tail -3 "$log" | sed 's/^/   /'
    echo "   -> $status"
}

skip() {  # skip NAME REASON
    echo "skipped: $2" > "$R/$1.log"
    ROWS+=("| $1 | skipped | 0 | $1.log | $2 |")
    write_summary
    echo "== $1: skipped ($2)"
}

# compute-sanitizer: in the toolkit's bin, its own folder, or on PATH
SANITIZER_BIN=""
for candidate in "$CUDA_HOME/bin/compute-sanitizer" "$CUDA_HOME/compute-sanitizer/compute-sanitizer" \
                 "$(command -v compute-sanitizer || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then SANITIZER_BIN=$candidate; break; fi
done
ARCH_OF_CARD="$PYTHON -c 'import torch; print(\"%d.%d\" % torch.cuda.get_device_capability())'"
BUILD_INFO="$PYTHON -c 'import gfkernels, json; print(json.dumps(gfkernels.build_info(), indent=1))' > '$R/build_info.json' && cat '$R/build_info.json'"
# the CUDA kernels are in the build when the extension lists the archs it was compiled for
CUDA_BUILT="$PYTHON -c 'import gfkernels, sys; sys.exit(0 if gfkernels.build_info()[\"cuda_arch_list\"] else 1)'"
# the tests that use a GPU (the CPU ones run in CI): CUDA kernels, Triton compiled for the card, the engine
GPU_TESTS="tests/cuda tests/test_crop_resize_triton.py tests/gfnet/test_inference.py"
GPU_BENCH=${GPU_CHECK_BENCH:-bench/test_bench_crop_resize_gpu.py bench/test_bench_early_exit.py bench/test_bench_inference.py bench/test_bench_predictor.py}
PYTEST="$PYTHON -m pytest -p no:cacheprovider"
# the GPU tests spend most of their time compiling Triton kernels on the host: spread them over
# the host's cores where pytest-xdist is installed
XDIST=""
if $PYTHON -c 'import xdist' > /dev/null 2>&1; then XDIST="-n $(( $(nproc) < 8 ? $(nproc) : 8 ))"; fi

if [ "$DRY_RUN" = 0 ]; then
    step device 60 "card, driver, versions" "nvidia-smi || exit 1; nvidia-smi -q -d CLOCK,MEMORY,COMPUTE | head -80; \
        $PYTHON -c 'import torch, sys; print(sys.version); print(\"torch\", torch.__version__, \"CUDA\", torch.version.cuda, torch.cuda.get_device_name(), torch.cuda.get_device_capability())' || exit 1; \
        \"\$CUDA_HOME/bin/nvcc\" --version; echo \"compute-sanitizer: ${SANITIZER_BIN:-not found}\"; nproc"

    # setup.py raises "GFKERNELS_CUDA=1 but the CUDA kernels cannot be built: <why>": kept as
    # the step's reason (else the build's last error line). GPU_CHECK_ARCH overrides the card's.
    step build 330 "GFKERNELS_CUDA=1, arch of the visible card" "
        arch=\${GPU_CHECK_ARCH:-\$($ARCH_OF_CARD)} || { echo 'no compute capability: no GPU visible to torch' | tee '$R/build.reason'; exit 1; }
        echo TORCH_CUDA_ARCH_LIST=\$arch
        GFKERNELS_CUDA=1 TORCH_CUDA_ARCH_LIST=\$arch $PYTHON -m pip install -v --no-build-isolation --no-deps -e . 2>&1 | tee '$R/pip.out'
        rc=\${PIPESTATUS[0]}
        if [ \$rc != 0 ]; then
            { grep -o 'CUDA kernels cannot be built: .*' '$R/pip.out' || grep -i 'error' '$R/pip.out' | tail -1; } | head -1 | cut -c1-300 > '$R/build.reason'
            exit \$rc
        fi
        $BUILD_INFO || exit 1
        $CUDA_BUILT || { echo 'the extension has no CUDA kernels (build_info cuda_arch_list is empty)' | tee '$R/build.reason'; exit 1; }"

    step sync-debug 90 "one host sync per engine step, none in the ops" \
        "$PYTHON -m bench.gpu_sync_check --device cuda"

    step tests 240 "junit: tests.xml" \
        "$PYTEST -q -rfs --tb=short $XDIST --durations=10 --junitxml='$R/tests.xml' $GPU_TESTS"

    step bench 150 "bench.json, bench/summary.md" \
        "GFKERNELS_BENCH_RESULTS='$R/bench' $PYTEST -q $GPU_BENCH -k 'cuda or gpu' --benchmark-only \
         --benchmark-json='$R/bench.json' --benchmark-columns=min,median,mean,rounds"

    step profile 120 "profile.md, profile.json" \
        "$PYTHON -m bench.gpu_profile --json '$R/profile.json' | tee '$R/profile.md'"

    if [ -n "$SANITIZER_BIN" ]; then
        SANITIZER="'$SANITIZER_BIN' --error-exitcode 3 --print-limit 20"
        # without the caching allocator, memcheck sees each tensor's own bounds
        step memcheck 60 "every CUDA op once" "PYTORCH_NO_CUDA_MEMORY_CACHING=1 $SANITIZER --tool memcheck --leak-check no \
            $PYTHON -m bench.gpu_sanitize_ops --device cuda"
        step racecheck 60 "shared-memory races" "$SANITIZER --tool racecheck $PYTHON -m bench.gpu_sanitize_ops --device cuda"
        step synccheck 60 "barriers" "$SANITIZER --tool synccheck $PYTHON -m bench.gpu_sanitize_ops --device cuda"
    else
        for tool in memcheck racecheck synccheck; do
            skip "$tool" "compute-sanitizer not found (\$CUDA_HOME/bin, \$CUDA_HOME/compute-sanitizer, PATH)"
        done
    fi

    step gpu-report 120 "gpu_report.md, gpu_report.json" \
        "env -u TRITON_INTERPRET $PYTHON -m bench.gpu_report --json '$R/gpu_report.json' | tee '$R/gpu_report.md'"
else
    step device 60 "dry run: versions only" "$PYTHON -c 'import torch, sys; print(sys.version); print(\"torch\", torch.__version__, \"CUDA\", torch.version.cuda)'; \
        \"\$CUDA_HOME/bin/nvcc\" --version || echo 'no nvcc under CUDA_HOME'; nproc"
    ROWS+=("| nvidia-smi | skipped | 0 | device.log | dry run: no GPU |")

    step build 120 "dry run: setup.py's CUDA decision (no compile) and the installed build_info" \
        "$PYTHON setup.py --name && $BUILD_INFO"

    step sync-debug 120 "dry run: the same calls on the CPU (no syncs to see)" \
        "$PYTHON -m bench.gpu_sync_check --device cpu"

    step tests 120 "dry run: collected only" "$PYTEST -q --collect-only $GPU_TESTS"

    step bench 180 "dry run: every benchmark collected, one CPU case run" \
        "$PYTEST -q bench --benchmark-only --collect-only && \
         GFKERNELS_BENCH_RESULTS='$R/bench' $PYTEST -q bench/test_bench_early_exit.py -k 'cpu and 0.5' \
         --benchmark-only --benchmark-json='$R/bench.json'"

    step profile 120 "dry run: the profile script on CPU tensors (the ops' cases)" \
        "$PYTHON -m bench.gpu_profile --device cpu --only copy_same early_exit_op_cpp gather_rows \
         --json '$R/profile.json' | tee '$R/profile.md'"

    step sanitize-ops 120 "dry run: the sanitizers' op script on the CPU" \
        "$PYTHON -m bench.gpu_sanitize_ops --device cpu"
    for tool in memcheck racecheck synccheck; do
        skip "$tool" "needs a GPU (compute-sanitizer checks CUDA kernels)"
    done

    if $PYTHON -c 'import sys, bench.gpu_report as g; sys.exit(0 if g.cuda_report() else 1)' > /dev/null 2>&1; then
        step gpu-report 120 "dry run: CUDA kernels only (make gpu-report compiles the Triton ones too)" \
            "$PYTHON -m bench.gpu_report --cuda --json '$R/gpu_report.json' | tee '$R/gpu_report.md'"
    else
        skip gpu-report "the installed extension has no sm_90 CUDA code (built without CUDA)"
    fi
fi
write_summary
echo
cat "$SUMMARY"
exit $FAILED
