"""`make bench` writes pytest-benchmark JSON and a markdown summary of the ratios: run one
small benchmark the same way (into a temporary folder) and check both files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_writes_json_and_ratio_summary(tmp_path):
    env = dict(os.environ, GFKERNELS_BENCH_RESULTS=str(tmp_path), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "pytest", "bench/test_bench_early_exit.py", "-k", "cpu and 0.5",
           "--benchmark-only", f"--benchmark-json={tmp_path / 'latest.json'}", "-q", "-p", "no:cacheprovider"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    data = json.loads((tmp_path / "latest.json").read_text())
    names = {b["name"] for b in data["benchmarks"]}
    assert any("gfkernels" in n for n in names) and any("torch" in n for n in names), names
    assert all(b["stats"]["median"] > 0 for b in data["benchmarks"])
    summary = (tmp_path / "summary.md").read_text()
    assert summary.startswith("Machine: ")
    row = next(line for line in summary.splitlines() if line.startswith("| early_exit_cpu_50pct"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "gfkernels" and cells[2] == "torch"
    assert re.fullmatch(r"[0-9.]+x", cells[5]), row  # the speedup, ours against the baseline
    assert "Ratios against baselines" in proc.stdout
