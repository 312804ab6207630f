"""Compile-only checks of the GPU kernels, no GPU needed (bench/gpu_report.py does the work):

- every Triton kernel compiles ahead of time for sm_90, on the host paths the ops really take
  (each mode, float32 and float64 accumulation, both backwards, early_exit, gather_rows),
  without register spills and without approximate float32 division;
- the CUDA kernels of the built extension (its sm_90 cubins) use no stack: no spills.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from gfkernels import backends

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRITON_DIR = os.path.join(ROOT, "gfkernels", "triton")

pytest.importorskip("triton", reason="triton is not installed")


@pytest.fixture(scope="module")
def triton_report(tmp_path_factory):
    """The Triton report, made in a process without TRITON_INTERPRET (the interpreter replaces
    the kernels by Python)."""
    out = tmp_path_factory.mktemp("gpu_report") / "triton.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "python"),
                                         env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-m", "bench.gpu_report", "--triton", "--json",
                             str(out)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(out.read_text())["triton"]


def triton_kernel_names():
    names = set()
    for name in os.listdir(TRITON_DIR):
        if name.endswith(".py"):
            with open(os.path.join(TRITON_DIR, name)) as f:
                names |= set(re.findall(r"@triton\.jit[^\n]*\ndef (\w+)\(", f.read()))
    return {n for n in names if n.endswith("_kernel")}


def test_every_triton_kernel_compiles_for_sm90(triton_report):
    compiled = {row["kernel"] for row in triton_report}
    assert compiled == triton_kernel_names()
    forward = [r for r in triton_report if r["kernel"] == "_forward_kernel"]
    assert {re.search(r"MODE=(\d)", r["variant"]).group(1) for r in forward} == {"0", "1", "2"}


def test_triton_kernels_do_not_spill(triton_report):
    spilled = [(r["kernel"], r["variant"], r["registers"], r["spill_bytes"])
               for r in triton_report if r["spill_bytes"]]
    assert not spilled


def test_triton_divisions_are_correctly_rounded(triton_report):
    """Triton's float32 `/` is an approximate division (div.full.f32); early_exit's 1 / sum
    must round like the CUDA kernel and the reference so that ties decide alike."""
    approximate = [(r["kernel"], r["variant"]) for r in triton_report if r["approx_div"]]
    assert not approximate


@pytest.mark.skipif(not backends.compiled_with_cuda(), reason="gfkernels._C built without CUDA")
@pytest.mark.skipif(shutil.which("c++filt") is None, reason="needs c++filt to name the kernels")
def test_cuda_kernels_do_not_spill():
    from bench.gpu_report import cuda_report

    rows = cuda_report()
    if not rows:
        pytest.skip("the extension holds no sm_90 code (TORCH_CUDA_ARCH_LIST without 9.0)")
    names = {r.kernel for r in rows}
    assert {"forward_kernel", "backward_images_atomic_kernel", "backward_boxes_kernel",
            "confidence_kernel", "compact_kernel", "gather_kernel"} <= names
    spilled = [(r.kernel, r.variant, r.registers, r.spill_bytes) for r in rows if r.spill_bytes]
    assert not spilled
    # The forward's launch bounds: at most 64 registers for nearest and bilinear with float
    # accumulation (4 blocks of 256 threads per SM), 80 for bicubic.
    for r in rows:
        if r.kernel == "forward_kernel" and not r.variant.endswith("double>"):
            limit = 80 if r.variant.startswith("<Mode 2") else 64
            assert r.registers <= limit, (r.variant, r.registers)
