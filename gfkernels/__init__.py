"""gfkernels: fused crop-resize and early-exit kernels for GFNet (C++/CUDA and Triton).

Public API:
    crop_resize(images, boxes, size, *, batch_index=None, mode="bilinear", ...)
    build_info()
Every op has a pure-PyTorch definition in gfkernels.reference.
"""

from __future__ import annotations

from importlib import metadata as _metadata

import torch

from . import reference
from .early_exit import early_exit, gather_rows
from .ops import BACKENDS, crop_resize, default_backend
from .reference import focus_boxes

__all__ = ["BACKENDS", "build_info", "crop_resize", "default_backend", "early_exit",
           "focus_boxes", "gather_rows", "reference"]

try:
    __version__ = _metadata.version("gfnet-kernels")
except _metadata.PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+source"


def build_info() -> dict:
    """What this installation holds: versions, compiled backends, CUDA archs, Triton."""
    from . import ops
    from .triton import triton_available

    backends = ["reference"]
    if ops._C is not None:
        backends.append("cpp")
        if ops._C.with_cuda:
            backends.append("cuda")
    triton_ok, triton_why = triton_available(None)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "gfkernels": __version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "compiled": ops._C is not None,
        "compile_error": None if ops._C is not None else str(ops._C_ERROR),
        "backends": backends,
        "cuda_arch_list": ops._C.cuda_arch_list if ops._C is not None else "",
        "cuda_available": torch.cuda.is_available(),
        "triton": triton_version,
        "triton_usable": triton_ok,
        "triton_note": triton_why,
    }
