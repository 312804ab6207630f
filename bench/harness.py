"""Shared machinery of the benchmark suites (bench/conftest.py writes the summary).

Every workload is a pytest-benchmark group holding our kernel and the baselines a user would
otherwise use, timed in the same run. Targets are ratios of medians against a baseline of the
same group (never absolute times). At the end of the session the ratios are written to
bench/results/summary.md (and printed), each marked as meeting its target or not.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Callable, Dict, List

import torch

# where summary.md goes (`make bench` also writes its JSON there); GFKERNELS_BENCH_RESULTS moves it
RESULTS_DIR = os.environ.get("GFKERNELS_BENCH_RESULTS") or os.path.join(os.path.dirname(__file__), "results")

# group -> case name -> median seconds, filled as the benchmarks run
MEDIANS: Dict[str, Dict[str, float]] = {}


@dataclass(frozen=True)
class Target:
    """Ours must be at least `min_speedup` times faster than `baseline` (a speedup below 1
    states a bound such as "no slower than 2x the copy": min_speedup=0.5). None: the ratio is
    reported with no target, `what` saying why (a target that needs fvcore, without it)."""

    group: str
    ours: str
    baseline: str
    min_speedup: float | None
    what: str


TARGETS: List[Target] = []


def add_targets(*targets: Target) -> None:
    TARGETS.extend(targets)


def run_case(benchmark, group: str, case: str, fn: Callable[[], object], *, rounds: int = 10,
             warmup_rounds: int = 2, sync: Callable[[], None] | None = None) -> None:
    """Times fn with pytest-benchmark (pedantic: fixed rounds, warm-up) and records its median."""
    benchmark.group = group
    benchmark.name = case
    benchmark.extra_info["threads"] = torch.get_num_threads()

    def call():
        out = fn()
        if sync is not None:
            sync()
        return out

    benchmark.pedantic(call, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
    MEDIANS.setdefault(group, {})[case] = benchmark.stats.stats.median


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    desc = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    if torch.cuda.is_available():
        desc += f", GPU {torch.cuda.get_device_name()}"
    return desc


def summary_markdown() -> str:
    lines = [f"Machine: {machine_description()}", "",
             "| workload | ours | baseline | ours (ms) | baseline (ms) | speedup | target | met |",
             "|---|---|---|---|---|---|---|---|"]
    for t in TARGETS:
        group = MEDIANS.get(t.group, {})
        if t.ours not in group or t.baseline not in group:
            continue
        ours, base = group[t.ours], group[t.baseline]
        speedup = base / ours
        if t.min_speedup is None:
            target, met = f"none ({t.what})", "-"
        else:
            target = f">= {t.min_speedup:g}x ({t.what})"
            met = "yes" if speedup >= t.min_speedup else "NO"
        lines.append(f"| {t.group} | {t.ours} | {t.baseline} | {ours * 1e3:.3f} | "
                     f"{base * 1e3:.3f} | {speedup:.2f}x | {target} | {met} |")
    return "\n".join(lines) + "\n"
