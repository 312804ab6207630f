"""bench/gpu_check.sh --dry-run (what CI runs of the GPU check): every step that needs no GPU
runs and passes with fvcore hidden, the GPU-only ones are skipped with their reason, and every
step leaves its log, with summary.md, under $OUT."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN_ON_CPU = {"device", "build", "sync-debug", "tests", "bench", "profile", "sanitize-ops"}
GPU_ONLY = {"nvidia-smi", "memcheck", "racecheck", "synccheck"}


def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "results"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)  # the GPU machine runs without the interpreter
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    rows = {}
    for line in (out / "summary.md").read_text().splitlines():
        m = re.match(r"\| ([\w-]+) \| ([^|]+) \| (\d+) \| ([\w.-]+) \| ([^|]*) \|$", line)
        if m:
            rows[m.group(1)] = (m.group(2).strip(), m.group(4), m.group(5).strip())
    assert RUN_ON_CPU | GPU_ONLY <= set(rows), rows
    for name in RUN_ON_CPU:
        assert rows[name][0] == "ok", (name, rows[name])
    for name in GPU_ONLY:
        assert rows[name][0] == "skipped" and rows[name][2], (name, rows[name])  # with a reason
    # gpu-report runs where the extension has sm_90 code, and says why not elsewhere
    assert rows["gpu-report"][0] == "ok" or "no sm_90" in rows["gpu-report"][2], rows["gpu-report"]
    for status, log, _note in rows.values():
        assert (out / log).is_file(), log
    assert "dynamic_inference: 3 steps, 3 syncs (one per step)" in (out / "sync-debug.log").read_text()
    assert "all ops ran on cpu" in (out / "sanitize-ops.log").read_text()
    assert "| early_exit_op_cpp |" in (out / "profile.md").read_text()
    assert '"backends"' in (out / "build_info.json").read_text()
    assert "gfkernels: " in (out / "build.log").read_text()  # setup.py's CUDA decision, said
    assert (out / "bench.json").is_file() and (out / "bench" / "summary.md").is_file()
    # every benchmark collects without fvcore, the GPU ones included
    bench_log = (out / "bench.log").read_text()
    assert "errors" not in bench_log and "test_bench_crop_resize_gpu.py::test_focus_cuda" in bench_log
