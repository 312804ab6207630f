"""Compile-only GPU report: registers, spills and shared memory of every kernel, no GPU needed.

    python -m bench.gpu_report                 # both tables, markdown
    python -m bench.gpu_report --triton --json out.json
    python -m bench.gpu_report --cuda          # needs a CUDA build of gfkernels._C

Triton: the host code of every Triton op runs on small CPU tensors (each mode, dtype family and
path: forward, both image backwards, the box backward, early_exit, gather_rows) while an
offline driver answers for an sm_90 GPU: every kernel launch compiles ahead of time through
Triton's normal path (the same specialisation as on a GPU) instead of launching. ptxas's
resource usage of each cubin is read with cuobjdump.

CUDA: the sm_90 cubins inside the built gfkernels._C, read with cuobjdump (no recompilation).

Run it in a process without TRITON_INTERPRET=1 (the interpreter replaces the kernels).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional

ARCH = 90


@dataclass
class KernelUsage:
    kernel: str  # kernel name (demangled for CUDA)
    variant: str  # what was compiled: constexprs / template arguments
    registers: int
    spill_bytes: int  # per-thread stack frame / local memory: register spills, local arrays
    shared_bytes: int
    num_warps: int = 0
    approx_div: int = 0  # approximate float32 divisions in the PTX (Triton's `/`; 0 wanted)


def _cuobjdump() -> str:
    """cuobjdump from the CUDA toolkit, else the one Triton ships."""
    for candidate in (os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin",
                                   "cuobjdump"), shutil.which("cuobjdump")):
        if candidate and os.path.exists(candidate):
            return candidate
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                        "cuobjdump")
    if os.path.exists(path):
        return path
    raise FileNotFoundError("cuobjdump not found (CUDA toolkit or triton's nvidia backend)")


_FUNCTION = re.compile(r"^\s*Function (\S+):\s*$")
_USAGE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def resource_usage(path: str, arch: int = ARCH) -> Dict[str, Dict[str, int]]:
    """{mangled function: {registers, stack, shared, local}} of the sm_<arch> code in `path`
    (a cubin, or a library with embedded fatbins)."""
    out = subprocess.run([_cuobjdump(), "--dump-resource-usage", path], check=True,
                         capture_output=True, text=True).stdout
    usage, current_arch, function = {}, None, None
    for line in out.splitlines():
        m = re.match(r"\s*arch = sm_(\d+)", line)
        if m:
            current_arch = int(m.group(1))
            continue
        m = _FUNCTION.match(line)
        if m:
            function = m.group(1)
            continue
        m = _USAGE.search(line)
        if m and function is not None and current_arch in (None, arch):
            reg, stack, shared, local = (int(v) for v in m.groups())
            usage[function] = dict(registers=reg, stack=stack, shared=shared, local=local)
            function = None
    return usage


def _demangle(names: List[str]) -> Dict[str, str]:
    tool = shutil.which("c++filt")
    if tool is None:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout
    return dict(zip(names, out.splitlines()))


def _short_cuda_name(demangled: str) -> tuple[str, str]:
    """('forward_kernel', '<Mode 2, float, float, float>') from a demangled CUDA kernel name."""
    name = re.sub(r"\(anonymous namespace\)::|gfkernels::|c10::", "", demangled)
    name = re.sub(r"\((Mode)\)(\d)", r"\1 \2", name)  # non-type template arguments
    name = re.sub(r"^void ", "", name)
    cut = len(name)
    for k, ch in enumerate(name):
        if ch in "<(":
            cut = k
            break
    base, rest = name[:cut], name[cut:]
    variant = ""
    if rest.startswith("<"):
        depth = 0
        for k, ch in enumerate(rest):
            depth += ch == "<"
            depth -= ch == ">"
            if depth == 0:
                variant = rest[:k + 1]
                break
    return base, variant


# ----------------------------------------------------------------------------------------
# CUDA
# ----------------------------------------------------------------------------------------


def cuda_report(library: Optional[str] = None, arch: int = ARCH) -> List[KernelUsage]:
    if library is None:
        import gfkernels

        found = glob.glob(os.path.join(os.path.dirname(gfkernels.__file__), "_C*.so"))
        if not found:
            raise FileNotFoundError("gfkernels._C is not built")
        library = found[0]
    usage = resource_usage(library, arch)
    names = _demangle(list(usage))
    rows = []
    for mangled, u in usage.items():
        name, variant = _short_cuda_name(names[mangled])
        if name.startswith("cub") or "DeviceScan" in name:  # library kernels
            continue
        rows.append(KernelUsage(name, variant, u["registers"], max(u["stack"], u["local"]),
                                u["shared"]))
    return sorted(rows, key=lambda r: (r.kernel, r.variant))


# ----------------------------------------------------------------------------------------
# Triton
# ----------------------------------------------------------------------------------------


class _OfflineDriver:
    """The few things JITFunction.run asks a driver for, answered for an sm_<arch> GPU that is
    not there: enough to compile, nothing to launch."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        import torch

        return torch.device("cpu")


_DTYPE_NAMES = {"torch.uint8": "u8", "torch.float16": "f16", "torch.bfloat16": "bf16",
                "torch.float32": "f32", "torch.float64": "f64", "torch.int16": "i16",
                "torch.int32": "i32", "torch.int64": "i64"}


_DATA_ARGS = ("img", "boxes", "out", "grad", "grad_images", "logits_ptr", "src_ptr", "dst_ptr")


def _variant(kernel, bound_args) -> str:
    """The kernel's constexpr values, then the dtypes of its data arguments (images, boxes,
    output, gradients, logits), e.g. "MODE=2 BLOCK=256 img=u8 boxes=f32 out=f32"."""
    parts = []
    for p in kernel.params:
        v = bound_args.get(p.name)
        if p.is_constexpr:
            parts.append(f"{p.name}={getattr(v, 'value', v)}")
    for p in kernel.params:
        v = bound_args.get(p.name)
        if p.name in _DATA_ARGS and hasattr(v, "dtype"):
            parts.append(f"{p.name.replace('_ptr', '')}={_DTYPE_NAMES.get(str(v.dtype), v.dtype)}")
    return " ".join(parts)


def _triton_cases() -> List[tuple[str, Callable[[], object]]]:
    """(label, call) pairs: each call runs one Triton op's host code on small CPU tensors."""
    import torch

    from gfkernels.triton import crop_resize as tcr
    from gfkernels.triton import early_exit as tee
    from gfkernels.triton import gather_rows as tgr

    size = 96  # GFNet's patch size: the block sizes the kernels really run with
    g = torch.Generator().manual_seed(0)

    def images(dtype, n=2, c=3, h=20, w=24):
        x = torch.rand(n, c, h, w, generator=g, dtype=torch.float64)
        return (x * 255).to(torch.uint8) if dtype == torch.uint8 else x.to(dtype)

    boxes = torch.tensor([[1.5, 2.0, 17.25, 15.0], [0.0, 0.0, 24.0, 20.0]])
    bi = torch.tensor([1, 0])
    cases = []
    for mode in ("nearest", "bilinear", "bicubic"):
        for in_dtype, out_dtype in ((torch.float32, torch.float32), (torch.uint8, torch.float32),
                                    (torch.bfloat16, torch.bfloat16),
                                    (torch.float64, torch.float64)):
            for channels_last in (False, True):  # the output layouts (the engine's is the latter)
                label = (f"crop_resize {mode} {in_dtype} -> {out_dtype}"
                         f"{' channels_last' if channels_last else ''}")
                cases.append((label, lambda m=mode, i=in_dtype, o=out_dtype, cl=channels_last:
                              tcr._forward_impl(images(i), boxes, bi, [size, size], m, False,
                                                "zeros", [0.5], [0.25], o, cl)))
        for acc in (torch.float32, torch.float64):
            grad = torch.randn(2, 3, size, size, generator=g, dtype=acc)
            cases.append((f"backward_images {mode} {acc}",
                          lambda m=mode, a=acc, gr=grad: tcr._backward_images_impl(
                              gr, boxes, bi, [2, 3, 20, 24], a, m, False, "border", None)))

            def deterministic(m=mode, a=acc, gr=grad):
                previous = torch.are_deterministic_algorithms_enabled()
                torch.use_deterministic_algorithms(True)
                try:
                    tcr._backward_images_impl(gr, boxes, bi, [2, 3, 20, 24], a, m, False,
                                              "border", None)
                finally:
                    torch.use_deterministic_algorithms(previous)

            cases.append((f"backward_images deterministic {mode} {acc}", deterministic))
            cases.append((f"backward_boxes {mode} {acc}",
                          lambda m=mode, a=acc, gr=grad: tcr._backward_boxes_impl(
                              gr, images(a), boxes, bi, m, False, "border", None)))
    for dtype in (torch.float16, torch.float32, torch.float64):
        logits = torch.randn(6, 10, generator=g).to(dtype)
        cases.append((f"early_exit {dtype}", lambda lg=logits: tee._early_exit_impl(
            lg, torch.tensor(0.5, dtype=torch.float64), torch.arange(6),
            torch.zeros(8, 10, dtype=lg.dtype), torch.zeros(8, dtype=torch.int64), 1)))
    tensors = [torch.randn(6, 4, generator=g), torch.randn(6, 3, 5).transpose(1, 2),
               torch.arange(6), torch.randn(6, 2).half()]
    cases.append(("gather_rows", lambda: tgr._gather_rows_impl(tensors, torch.tensor([3, 1, 0]),
                                                                2)))
    return cases


def triton_report(arch: int = ARCH) -> List[KernelUsage]:
    from gfkernels.triton import interpreting

    if interpreting():
        raise RuntimeError("run without TRITON_INTERPRET=1: the interpreter replaces the kernels")
    import torch  # noqa: F401  (before triton's driver is touched)
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction
    from torch._library.triton import set_wrap_triton_enabled

    compiled: Dict[tuple, KernelUsage] = {}
    original_run = JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        kernel = original_run(self, *args, grid=grid, warmup=True, **kwargs)
        bound = dict(zip([p.name for p in self.params], args))
        bound.update(kwargs)
        key = (self.fn.__name__, _variant(self, bound), kernel.metadata.num_warps)
        if key not in compiled:
            with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                f.write(kernel.asm["cubin"])
                f.flush()
                (u,) = resource_usage(f.name, arch).values()
            ptx = kernel.asm["ptx"]
            approx = len(re.findall(r"\bdiv\.(?:full|approx)(?:\.ftz)?\.f32\b", ptx))
            compiled[key] = KernelUsage(self.fn.__name__, key[1], u["registers"],
                                        max(u["stack"], u["local"]),
                                        kernel.metadata.shared, kernel.metadata.num_warps, approx)
        return kernel

    previous = driver._active  # not driver.active: without a GPU there is no default driver
    driver.set_active(_OfflineDriver(arch))
    JITFunction.run = compile_only
    try:
        with set_wrap_triton_enabled(False):
            for _label, call in _triton_cases():
                call()
    finally:
        JITFunction.run = original_run
        driver._active = previous
    return sorted(compiled.values(), key=lambda r: (r.kernel, r.variant))


# ----------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------


def markdown(rows: List[KernelUsage], title: str) -> str:
    lines = [f"### {title}", "",
             "| kernel | variant | registers | stack/spill (B) | shared (B) | warps |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.kernel} | {r.variant} | {r.registers} | {r.spill_bytes} | "
                     f"{r.shared_bytes} | {r.num_warps or ''} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--triton", action="store_true", help="Triton kernels only")
    parser.add_argument("--cuda", action="store_true", help="CUDA kernels only")
    parser.add_argument("--library", help="the extension to read (default: gfkernels._C)")
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    both = not (args.triton or args.cuda)
    report = {}
    if args.cuda or both:
        report["cuda"] = cuda_report(args.library)
        print(markdown(report["cuda"], f"CUDA kernels (sm_{ARCH}, from the built extension)"))
        print()
    if args.triton or both:
        report["triton"] = triton_report()
        print(markdown(report["triton"], f"Triton kernels (compiled ahead of time for sm_{ARCH})"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: [asdict(r) for r in v] for k, v in report.items()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
