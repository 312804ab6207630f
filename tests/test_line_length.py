"""The project's line limit (pyproject.toml, [tool.ruff] line-length) holds in every Python file
of the repository, so that it is a rule and not a wish."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("gfkernels", "python", "bench", "tests")


def test_every_python_line_within_the_limit():
    limit = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["ruff"]["line-length"]
    files = [REPO / "setup.py"] + [f for d in SOURCES for f in sorted((REPO / d).rglob("*.py"))]
    assert len(files) > 50
    long = [f"{f.relative_to(REPO)}:{n}: {len(line)} columns"
            for f in files for n, line in enumerate(f.read_text().splitlines(), start=1) if len(line) > limit]
    assert not long, f"lines over the {limit}-column limit:\n" + "\n".join(long)
