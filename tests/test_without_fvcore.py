"""The GPU machine has no fvcore: with it hidden (bench/without_fvcore), the benchmarks collect
exactly what they collect with it, and the predictor runs with its MACs marked as not counted,
while the commands that must count (gfnet flops, gfnet eval) refuse with the reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HIDE_FVCORE = str(REPO / "bench" / "without_fvcore")


def _run(args, *, hide_fvcore: bool, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if hide_fvcore:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (HIDE_FVCORE, env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _collected(hide_fvcore: bool) -> list[str]:
    proc = _run(["-m", "pytest", "bench", "--benchmark-only", "--collect-only", "-q",
                 "-p", "no:cacheprovider"], hide_fvcore=hide_fvcore)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return sorted(line for line in proc.stdout.splitlines() if "::" in line)


def test_blocker_hides_fvcore():
    proc = _run(["-c", "import fvcore"], hide_fvcore=True)
    assert proc.returncode != 0 and "hidden by bench/without_fvcore" in proc.stderr, proc.stderr


def test_benchmarks_collect_the_same_without_fvcore():
    without = _collected(hide_fvcore=True)
    assert without == _collected(hide_fvcore=False)
    files = {line.split("::")[0] for line in without}
    assert files == {str(p.relative_to(REPO)) for p in (REPO / "bench").glob("test_bench_*.py")}
    assert any("[cpu" in line or "-cpu" in line for line in without)


def test_predictor_and_commands_without_fvcore(tmp_path):
    proc = _run(["-m", "tests.without_fvcore_predict", str(tmp_path)], hide_fvcore=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "predictor: ok, macs None" in proc.stdout and "gfnet predict: ok" in proc.stdout
    assert "gfnet flops: refused" in proc.stdout and "gfnet eval: refused" in proc.stdout
