"""Builds gfkernels._C (C++ CPU kernels, plus CUDA kernels when a matching toolkit is found).

Switches (environment variables):
  GFKERNELS_CUDA=0|1    force the CUDA kernels off, or on (an error, with the reason, if nvcc cannot
                        build them: another major version than torch's CUDA, or too old for an arch)
  GFKERNELS_CUDA=gpu    build them only when torch sees a GPU here (`make demo` uses this: kernels
                        no GPU can run are minutes of compiling for nothing)
  TORCH_CUDA_ARCH_LIST  GPU architectures; defaults to the visible GPUs, else "8.0;9.0"
  MAX_JOBS              parallel compile jobs for ninja
  GFKERNELS_BUILD_TEMP  where object files are kept (default build/temp, for incremental builds)
Sources and flags live in csrc/build.cfg (read by CMakeLists.txt too); metadata,
dependencies and the console script in pyproject.toml.
"""

import os
import re
import subprocess

from setuptools import find_packages, setup

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def read_build_config(path=os.path.join(ROOT, "csrc", "build.cfg")):
    """csrc/build.cfg as {key: [values]} (`key = value ...` lines, # comments)."""
    config = {}
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                key, _, values = line.partition("=")
                config[key.strip()] = values.split()
    return config


BUILD = read_build_config()


def _nvcc_version(cuda_home):
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    match = re.search(r"release (\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else None


# The first nvcc release that compiles for each GPU architecture (compute capability).
NVCC_FOR_ARCH = {(9, 0): (11, 8), (8, 9): (11, 8), (8, 7): (11, 4), (8, 6): (11, 1),
                 (8, 0): (11, 0), (10, 0): (12, 8), (10, 1): (12, 8), (12, 0): (12, 8),
                 (10, 3): (12, 9), (12, 1): (12, 9), (11, 0): (13, 0)}


def _arch_list():
    """The compute capabilities to build for: TORCH_CUDA_ARCH_LIST ("8.0;9.0+PTX", "9.0a"),
    else the visible GPUs', else csrc/build.cfg's default."""
    text = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if text:
        return sorted({(int(m.group(1)), int(m.group(2)))
                       for m in re.finditer(r"(\d+)\.(\d+)", text)})
    if torch.cuda.is_available():
        return sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    return sorted({(int(m.group(1)), int(m.group(2)))
                   for m in re.finditer(r"(\d+)\.(\d+)", BUILD["default_cuda_arch_list"][0])})


def _toolkit_problem(found, torch_cuda, archs):
    """Why nvcc `found` (major, minor) cannot build kernels for torch built with CUDA
    `torch_cuda` (major, minor) and these archs, or None. The major versions must agree (the
    kernels link against torch's CUDA runtime, whose ABI changes with the major version); within
    a major version any minor works both ways (CUDA's minor-version compatibility), but nvcc
    must be new enough for every architecture asked for."""
    if found[0] != torch_cuda[0]:
        return (f"nvcc {found[0]}.{found[1]} and torch's CUDA {torch_cuda[0]}.{torch_cuda[1]} differ "
                "in major version (use a toolkit of the same major version as torch's CUDA)")
    too_old = [f"sm_{a}{b} needs nvcc >= {NVCC_FOR_ARCH[a, b][0]}.{NVCC_FOR_ARCH[a, b][1]}"
               for a, b in archs if NVCC_FOR_ARCH.get((a, b), (0, 0)) > found]
    if too_old:
        return f"nvcc {found[0]}.{found[1]} is too old for the GPU: " + ", ".join(too_old)
    return None


def _want_cuda():
    """True when the CUDA kernels should be compiled; explains itself when they are not."""
    switch = os.environ.get("GFKERNELS_CUDA", "").strip()
    if switch == "0":
        print("gfkernels: GFKERNELS_CUDA=0, building CPU kernels only")
        return False
    if switch == "gpu" and not torch.cuda.is_available():
        print("gfkernels: GFKERNELS_CUDA=gpu and torch sees no GPU, building CPU kernels only")
        return False
    if switch not in ("", "1", "gpu"):
        raise RuntimeError(f"GFKERNELS_CUDA must be 0, 1 or gpu, not {switch!r}")
    problem = None
    cuda_home = cpp_extension.CUDA_HOME
    if torch.version.cuda is None:
        problem = f"torch {torch.__version__} is a CPU-only build"
    elif cuda_home is None:
        problem = "no CUDA toolkit found (set CUDA_HOME)"
    else:
        found = _nvcc_version(cuda_home)
        wanted = tuple(int(x) for x in torch.version.cuda.split(".")[:2])
        if found is None:
            problem = f"cannot run nvcc under CUDA_HOME={cuda_home}"
        else:
            problem = _toolkit_problem(found, wanted, _arch_list())
            if problem is None and found != wanted:
                print(f"gfkernels: nvcc {found[0]}.{found[1]} with torch's CUDA {torch.version.cuda}: "
                      "the same major version, minor versions are compatible")
    if problem is None:
        print(f"gfkernels: building the CUDA kernels (nvcc under {cuda_home}, torch's CUDA "
              f"{torch.version.cuda})")
        return True
    if switch == "1":
        raise RuntimeError(f"GFKERNELS_CUDA=1 but the CUDA kernels cannot be built: {problem}")
    print(f"gfkernels: building CPU kernels only ({problem})")
    return False


def _extension():
    sources = BUILD["cxx_sources"]
    cxx_flags = BUILD["cxx_flags"]
    macros = []
    include_dirs = [os.path.join(ROOT, d) for d in BUILD["include_dirs"]]
    with_cuda = _want_cuda()
    if with_cuda:
        # torch's own arch detection fails with zero visible GPUs: pick a sensible default.
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = BUILD["default_cuda_arch_list"][0]
        arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "native")
        macros += [("GFK_WITH_CUDA", None), ("GFK_CUDA_ARCH_LIST", f'"{arch_list}"')]
        return cpp_extension.CUDAExtension(
            "gfkernels._C",
            sources + BUILD["cuda_sources"],
            include_dirs=include_dirs,
            define_macros=macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": BUILD["nvcc_flags"]},
        )
    return cpp_extension.CppExtension(
        "gfkernels._C", sources, include_dirs=include_dirs, define_macros=macros,
        extra_compile_args={"cxx": cxx_flags}
    )


class BuildExtension(cpp_extension.BuildExtension):
    """torch's BuildExtension (ninja) with object files kept under build/ in the source tree,
    so that repeated `pip install -e .` runs recompile only what changed (pip's editable
    builds otherwise use a fresh temporary directory every time)."""

    def finalize_options(self):
        super().finalize_options()
        self.build_temp = os.environ.get("GFKERNELS_BUILD_TEMP") or os.path.join(ROOT, "build", "temp")


setup(
    # gfkernels lives at the top, gfnet under python/.
    packages=find_packages(include=["gfkernels", "gfkernels.*"])
    + find_packages("python", include=["gfnet", "gfnet.*"]),
    package_dir={"gfkernels": "gfkernels", "gfnet": "python/gfnet"},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
