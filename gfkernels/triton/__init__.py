"""Triton versions of the gfkernels ops. They run on CUDA tensors, and on CPU tensors under
TRITON_INTERPRET=1 (Triton's interpreter), which is how CI tests them."""

from __future__ import annotations

import os
from typing import Optional, Tuple

import torch


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_available(device: Optional[torch.device]) -> Tuple[bool, str]:
    """(usable, reason): whether Triton kernels can run on `device` (None: on any device)."""
    try:
        import triton  # noqa: F401
    except ImportError as error:
        return False, f"triton does not import ({error})"
    if device is None:
        if interpreting():
            return True, "TRITON_INTERPRET=1: kernels run interpreted on CPU tensors"
        if torch.cuda.is_available():
            return True, "CUDA GPU present"
        return False, "no CUDA GPU (set TRITON_INTERPRET=1 to run on CPU tensors)"
    if device.type == "cuda":
        if interpreting():
            return False, "TRITON_INTERPRET=1 runs on CPU tensors only"
        return True, "CUDA GPU present"
    if device.type == "cpu" and interpreting():
        return True, "TRITON_INTERPRET=1: kernels run interpreted on CPU tensors"
    return False, f"Triton needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got {device}"
