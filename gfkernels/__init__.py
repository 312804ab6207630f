"""gfkernels: fused crop-resize and early-exit kernels for GFNet (C++/CUDA and Triton).

Public API:
    crop_resize(images, boxes, size, *, batch_index=None, mode="bilinear", ...)
    early_exit(logits, threshold, active, out_logits, exit_step, step)
    gather_rows(tensors, index, n)
    focus_boxes(actions, image_size, patch_size), whole_image_boxes(images, n): the boxes GFNet crops
    continuous_focus_boxes(actions, image_size, patch_size): focus boxes before the floor,
        differentiable in the actions (the differentiable policy training)
    Kernels(backend=None, fallback=False): the three ops under one backend policy, resolved once
        per device, and crops whose options are checked once (Kernels.crop)
    build_info()
Every op has a pure-PyTorch definition in gfkernels.reference; gfkernels.backends is the
table of implementations (docs/OPS.md).
"""

from __future__ import annotations

from importlib import metadata as _metadata

import torch

from . import backends, reference
from .kernels import Crop, Kernels
from .ops.crop_resize import crop_resize
from .ops.early_exit import early_exit
from .ops.gather_rows import gather_rows
from .boxes import continuous_focus_boxes, focus_boxes, whole_image_boxes

BACKENDS = backends.NAMES

__all__ = ["BACKENDS", "Crop", "Kernels", "backends", "build_info", "continuous_focus_boxes",
           "crop_resize", "default_backend", "early_exit", "focus_boxes", "gather_rows", "reference",
           "whole_image_boxes"]

try:
    __version__ = _metadata.version("gfnet-kernels")
except _metadata.PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+source"


def default_backend(device) -> str:
    """The backend tensors on `device` get when backend=None (available or not)."""
    return backends.default_name(torch.device(device))


def build_info() -> dict:
    """What this installation holds: versions, usable backends, CUDA archs, Triton."""
    compiled = backends._C
    triton_ok, triton_why = backends.TABLE["triton"].status()
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "gfkernels": __version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "compiled": compiled is not None,
        "compile_error": None if compiled is not None else str(backends._C_ERROR),
        "backends": list(backends.available_names()),
        "cuda_arch_list": compiled.cuda_arch_list if compiled is not None else "",
        "cuda_available": torch.cuda.is_available(),
        "triton": triton_version,
        "triton_usable": triton_ok,
        "triton_note": triton_why,
    }
