"""The validation contract of the gfkernels ops' values, one definition for every backend.

The public API checks metadata (shapes, dtypes, devices, options) before choosing a backend
(gfkernels/ops/*.py). Values are checked by each backend where reading them costs no device
sync, with the functions below: the reference (on any device: it is the specification), the
Triton kernels on CPU tensors (under the interpreter) and for a host threshold, and the C++ CPU
kernels in C++ with the same messages and exception types (csrc/ops/*.cpp, csrc/cpu/*.cpp).
CUDA kernels do not read values on the host (docs/OPS.md, "Errors").

| bad value | exception |
|---|---|
| an output larger than MAX_OUTPUT_ELEMENTS_PER_BOX per box | ValueError |
| NaN or inf in boxes | ValueError |
| NaN or inf in mean; NaN, inf or 0 in std | ValueError |
| a NaN threshold (a float or a 0-dim tensor) | ValueError |
| repeated values in early_exit's active | ValueError |
| index values out of range (batch_index, active, gather index) | IndexError |
| bool or float where an int is required (step, n) | TypeError |

This module imports nothing of gfkernels, so the reference can use it.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

def crop_output_format(channels_last: bool) -> torch.memory_format:
    """crop_resize's output layout from its schema's ``channels_last`` flag (the C++ kernels'
    ``output_format``, csrc/ops/crop_resize.h): one mapping for the API, the fake kernel, the
    reference and Triton."""
    return torch.channels_last if channels_last else torch.contiguous_format


# crop_resize refuses an output of more than this many elements (C * h * w) per box, on every
# backend: the GPU kernels index pixels in 32 bits (with room for a tile), and on the CPU an
# output this size is already 8 GiB of float32 per box, far past any GFNet use. The C++ ops
# hold the same number (kMaxOutputElementsPerBox in csrc/sampling.h; a test checks they agree).
MAX_OUTPUT_ELEMENTS_PER_BOX = 2**31 - 1 - 2**20


def check_output_size(channels: int, h: int, w: int) -> None:
    """ValueError if a (C, h, w) crop is over the per-box limit."""
    elements = int(channels) * int(h) * int(w)
    if elements > MAX_OUTPUT_ELEMENTS_PER_BOX:
        raise ValueError(f"crop_resize: size ({h}, {w}) with C = {channels} channels is {elements} output "
                         f"elements per box, over the limit of {MAX_OUTPUT_ELEMENTS_PER_BOX} (C * h * w)")


def check_per_channel_values(name: str, values: Optional[Sequence[float]], nonzero: bool) -> None:
    """mean / std values: finite, and non-zero for std (ValueError)."""
    if values is None:
        return
    for v in values:
        if not math.isfinite(v):
            raise ValueError(f"crop_resize: {name} must be finite, got {v}")
        if nonzero and v == 0:
            raise ValueError(f"crop_resize: {name} must be non-zero")


def check_finite_boxes(op: str, boxes: torch.Tensor) -> None:
    """ValueError if a box holds NaN or inf."""
    if boxes.numel() and not bool(torch.isfinite(boxes).all()):
        raise ValueError(f"{op}: boxes must be finite (no NaN or inf)")


def check_threshold_value(threshold) -> None:
    """ValueError for a NaN threshold (a float or a 0-dim tensor, read where it is)."""
    value = float(threshold) if isinstance(threshold, torch.Tensor) else threshold
    if isinstance(value, float) and math.isnan(value):
        raise ValueError("early_exit: threshold must not be NaN")


def check_distinct(op: str, name: str, index: torch.Tensor) -> None:
    """ValueError if ``index`` (1-D int64) repeats a value: each row may be written once."""
    if index.numel() < 2:
        return
    values, counts = torch.unique(index, return_counts=True)
    repeated = counts > 1
    if bool(repeated.any()):
        raise ValueError(f"{op}: {name} values must be distinct, got {int(values[repeated][0])} "
                         f"{int(counts[repeated][0])} times")


def check_int(op: str, name: str, value) -> None:
    """TypeError unless ``value`` is an int (a bool or a float is not, nor is a tensor)."""
    if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__}")


__all__ = ["MAX_OUTPUT_ELEMENTS_PER_BOX", "check_distinct", "check_finite_boxes", "check_int",
           "check_output_size", "check_per_channel_values", "check_threshold_value"]
