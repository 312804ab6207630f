"""Writes the ratio summary of the benchmark session (machinery in bench/harness.py)."""

from __future__ import annotations

import os

import pytest

from bench.harness import MEDIANS, RESULTS_DIR, summary_markdown


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    if not MEDIANS:
        return
    text = summary_markdown()
    os.makedirs(RESULTS_DIR, exist_ok=True)
    with open(os.path.join(RESULTS_DIR, "summary.md"), "w") as f:
        f.write(text)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("")
        reporter.write_line("Ratios against baselines (bench/results/summary.md):")
        for line in text.splitlines():
            reporter.write_line(line)
