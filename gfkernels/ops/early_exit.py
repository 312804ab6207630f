"""Early exit: the public API of the early_exit op, its metadata checks and fake kernel
(schema: csrc/ops/early_exit.cpp; gather_rows, the compaction that follows it, is in
gather_rows.py).

One step of the dynamic inference loop (docs/ARCHITECTURE.md)::

    keep, num_keep = gfkernels.early_exit(logits, threshold, active, out_logits, exit_step, t)
    n = int(num_keep)                      # the one host sync of a step
    active, h, state = gfkernels.gather_rows([active, h, state], keep, n)

early_exit reads nothing on the host for CUDA tensors; its outputs have fixed shapes ((n,) and
()), so torch.compile needs no data-dependent sizes for it. It is not differentiable (an
inference op). Why gather_rows takes n on the host: gather_rows.py.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional, Tuple, Union

import torch

from .. import backends
from .common import call, check_index_values, describe, register_compiled

LOGIT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

Threshold = Union[float, int, torch.Tensor]


def threshold_tensor(threshold: Threshold) -> torch.Tensor:
    """A 0-dim floating tensor: floats become float64 CPU scalars (read on the host by the
    kernels, never copied to the GPU); tensors are kept where they are."""
    if isinstance(threshold, torch.Tensor):
        if threshold.dim() != 0:
            raise ValueError("early_exit: threshold must be a float or a 0-dim tensor, got "
                             f"shape {tuple(threshold.shape)}")
        if not threshold.is_floating_point():
            raise TypeError(f"early_exit: threshold must be a floating tensor, got "
                            f"{threshold.dtype}")
        return threshold
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"early_exit: threshold must be a float or a 0-dim tensor, got "
                        f"{type(threshold).__name__}")
    if math.isnan(threshold):
        raise ValueError("early_exit: threshold must not be NaN")
    if torch.compiler.is_compiling():  # a constant of the graph (dynamo skips caches)
        return torch.tensor(float(threshold), dtype=torch.float64)
    return _host_threshold(float(threshold))


@functools.lru_cache(maxsize=256)
def _host_threshold(value: float) -> torch.Tensor:
    """A 0-dim float64 CPU tensor of `value`, made once per value (torch.tensor costs
    microseconds, paid at every step of the engine); no op writes its threshold. Made outside
    inference mode, so that it is an ordinary tensor wherever it is used."""
    with torch.inference_mode(False):
        return torch.tensor(value, dtype=torch.float64)


def check_early_exit_args(logits, threshold, active, out_logits, exit_step, step) -> None:
    """Metadata checks shared by every backend (no tensor value is read, so this runs under
    torch.compile and costs no host sync); the CPU kernels also check active's values."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError(f"early_exit: logits must be a 2-D tensor (n, K), got "
                         f"{describe(logits)}")
    if logits.dtype not in LOGIT_DTYPES:
        raise TypeError(f"early_exit: logits must be float16, bfloat16, float32 or float64, "
                        f"got {logits.dtype}")
    n, K = logits.shape
    device = logits.device  # read once: each read of .device makes a new object
    if K == 0:
        raise ValueError(f"early_exit: logits must have K > 0 classes, got shape "
                         f"{tuple(logits.shape)}")
    threshold_device = threshold.device
    if threshold_device != device and threshold_device.type != "cpu":
        raise ValueError(f"early_exit: threshold must be on the CPU or on the logits' device "
                         f"{device}, got {threshold_device}")
    if not isinstance(active, torch.Tensor) or active.dtype != torch.int64:
        raise TypeError(f"early_exit: active must be an int64 tensor, got "
                        f"{getattr(active, 'dtype', type(active).__name__)}")
    if active.dim() != 1 or active.shape[0] != n:
        raise ValueError(f"early_exit: active must be (n,) with n = {n} rows of logits, got "
                         f"shape {tuple(active.shape)}")
    if not isinstance(out_logits, torch.Tensor) or out_logits.dim() != 2 or \
            out_logits.shape[1] != K:
        raise ValueError(f"early_exit: out_logits must be (B, K) with K = {K}, got "
                         f"{describe(out_logits)}")
    if out_logits.dtype != logits.dtype:
        raise TypeError(f"early_exit: out_logits must have the logits' dtype {logits.dtype}, "
                        f"got {out_logits.dtype}")
    if not isinstance(exit_step, torch.Tensor) or exit_step.dtype != torch.int64:
        raise TypeError(f"early_exit: exit_step must be an int64 tensor, got "
                        f"{getattr(exit_step, 'dtype', type(exit_step).__name__)}")
    if exit_step.dim() != 1 or exit_step.shape[0] != out_logits.shape[0]:
        raise ValueError(f"early_exit: exit_step must be (B,) with B = {out_logits.shape[0]} "
                         f"rows of out_logits, got shape {tuple(exit_step.shape)}")
    if not active.device == out_logits.device == exit_step.device == device:
        for name, t in (("active", active), ("out_logits", out_logits), ("exit_step", exit_step)):
            if t.device != device:
                raise ValueError(f"early_exit: {name} must be on the logits' device {device}, "
                                 f"got {t.device}")
    if isinstance(step, bool) or not isinstance(step, (int, torch.SymInt)):
        raise TypeError(f"early_exit: step must be an int, got {type(step).__name__}")


def early_exit(
    logits: torch.Tensor,
    threshold: Threshold,
    active: torch.Tensor,
    out_logits: torch.Tensor,
    exit_step: torch.Tensor,
    step: int,
    *,
    backend: Optional[str] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Decides which of the n active rows exit now, records them, and compacts the rest.

    logits (n, K) float16/bfloat16/float32/float64 of the still-active samples, any strides;
    threshold a float or a 0-dim floating tensor (CPU or the logits' device); active (n,)
    int64 their rows in the full batch of B; out_logits (B, K) (the logits' dtype) and
    exit_step (B,) int64 are written in place for the rows that exit: out_logits[active[i]] =
    logits[i], exit_step[active[i]] = step. A row exits when its confidence (max softmax
    probability, computed in float32, float64 for float64 logits) >= threshold; a threshold of
    -inf lets every row exit; a row holding a NaN is never confident (it exits at -inf only).

    Returns (keep, num_keep): keep (n,) int64 is a stable partition of range(n), the surviving
    positions in order first (num_keep of them), then the exiting ones in order; num_keep is a
    0-dim int64 tensor on the logits' device. Nothing is read on the host for CUDA tensors.
    backend: a name of gfkernels.backends.NAMES, or None for the device's default.
    """
    return run_early_exit(lambda device: backends.lookup("early_exit", backend, device), logits,
                          threshold, active, out_logits, exit_step, step)


def run_early_exit(lookup: Callable, logits, threshold, active, out_logits, exit_step, step):
    """early_exit's checks and call, with the backend from ``lookup(device) -> (Backend, op)``
    (gfkernels.backends.lookup, or a gfkernels.Kernels policy)."""
    threshold = threshold_tensor(threshold)
    check_early_exit_args(logits, threshold, active, out_logits, exit_step, step)
    chosen, op = lookup(logits.device)
    if not chosen.checks_index_values:
        check_index_values(active, out_logits.shape[0], "early_exit", "active")
    return call(chosen, op, False, logits, threshold, active, out_logits, exit_step, step)


# ----------------------------------------------------------------------------------------
# Fake kernel (shared by the compiled and the Triton ops)
# ----------------------------------------------------------------------------------------


def fake_early_exit(logits, threshold, active, out_logits, exit_step, step):
    # the checks too: on meta tensors mixed with real ones this runs instead of a kernel
    check_early_exit_args(logits, threshold, active, out_logits, exit_step, step)
    n = logits.shape[0]
    return (logits.new_empty((n,), dtype=torch.int64), logits.new_empty((), dtype=torch.int64))


register_compiled("early_exit", fake_early_exit)
