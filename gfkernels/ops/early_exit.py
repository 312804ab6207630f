"""Early exit (batch compaction): the public API of the early_exit and gather_rows ops, their
metadata checks, fake kernels and autograd (schemas: csrc/ops/early_exit.cpp).

One step of the dynamic inference loop (docs/ARCHITECTURE.md)::

    keep, num_keep = gfkernels.early_exit(logits, threshold, active, out_logits, exit_step, t)
    n = int(num_keep)                      # the one host sync of a step
    active, h, state = gfkernels.gather_rows([active, h, state], keep, n)

gather_rows takes n as a host int, the value the loop reads from num_keep once anyway: its
outputs then have their exact shape (n, ...), so every later op of the step (and of the next
steps) runs on the surviving rows only, with no padding and no further sync. early_exit itself
reads nothing on the host for CUDA tensors; its outputs have fixed shapes ((n,) and ()), so
torch.compile needs no data-dependent sizes for it. early_exit is not differentiable (an
inference op); gather_rows is, wrt its floating tensors, on every backend.
"""

from __future__ import annotations

import functools
import math
from typing import List, Optional, Sequence, Tuple, Union

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
    if K == 0:
        raise ValueError(f"early_exit: logits must have K > 0 classes, got shape "
                         f"{tuple(logits.shape)}")
    if threshold.device != logits.device and threshold.device.type != "cpu":
        raise ValueError(f"early_exit: threshold must be on the CPU or on the logits' device "
                         f"{logits.device}, got {threshold.device}")
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
    for name, t in (("active", active), ("out_logits", out_logits), ("exit_step", exit_step)):
        if t.device != logits.device:
            raise ValueError(f"early_exit: {name} must be on the logits' device "
                             f"{logits.device}, got {t.device}")
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
    threshold = threshold_tensor(threshold)
    check_early_exit_args(logits, threshold, active, out_logits, exit_step, step)
    chosen, op = backends.lookup("early_exit", backend, logits.device)
    if not chosen.checks_index_values:
        check_index_values(active, out_logits.shape[0], "early_exit", "active")
    return call(chosen, op, False, logits, threshold, active, out_logits, exit_step, step)


def check_gather_rows_args(tensors, index, n) -> List[torch.Tensor]:
    """Metadata checks shared by every backend; returns the tensors as a list."""
    if isinstance(tensors, torch.Tensor) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"gather_rows: tensors must be a list or tuple of tensors, got "
                        f"{type(tensors).__name__} (wrap a single tensor in a list)")
    tensors = list(tensors)
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"gather_rows: tensors[{i}] must be a tensor, got {type(t).__name__}")
    if not isinstance(index, torch.Tensor) or index.dtype != torch.int64:
        raise TypeError(f"gather_rows: index must be an int64 tensor, got "
                        f"{getattr(index, 'dtype', type(index).__name__)}")
    if index.dim() != 1:
        raise ValueError(f"gather_rows: index must be 1-D, got shape {tuple(index.shape)}")
    if isinstance(n, bool) or not isinstance(n, (int, torch.SymInt)):
        raise TypeError(f"gather_rows: n must be an int, got {type(n).__name__}")
    if not torch.compiler.is_compiling() or isinstance(n, int):
        if n < 0 or n > index.shape[0]:
            raise ValueError(f"gather_rows: n must lie in [0, {index.shape[0]}] (the length of "
                             f"index), got {n}")
    for i, t in enumerate(tensors):
        if t.dim() == 0:
            raise ValueError(f"gather_rows: tensors[{i}] must have a leading (batch) dimension, "
                             "got a 0-dim tensor")
        if t.shape[0] != tensors[0].shape[0]:
            raise ValueError(f"gather_rows: tensors[{i}] has leading size {t.shape[0]} but "
                             f"tensors[0] has {tensors[0].shape[0]} (all must share the batch "
                             "dimension)")
        if t.device != index.device:
            raise ValueError(f"gather_rows: tensors[{i}] must be on the index's device "
                             f"{index.device}, got {t.device}")
    return tensors


def gather_rows(
    tensors: Sequence[torch.Tensor],
    index: torch.Tensor,
    n: Union[int, torch.Tensor],
    *,
    backend: Optional[str] = None,
) -> List[torch.Tensor]:
    """[t[index[:n]] for t in tensors] in one pass: compacts per-sample tensors (any dtype,
    any trailing shape, any strides; all with the same leading size N) to their rows
    index[0..n). Each output is a new contiguous tensor (n, *t.shape[1:]).

    n is a host int: the loop reads num_keep once (`n = int(num_keep)`) and passes it here. A
    0-dim integer tensor is accepted too and read with int() (that read is a host sync on a
    GPU). index (M,) int64 with M >= n, values in [0, N). Differentiable wrt floating tensors.
    backend: a name of gfkernels.backends.NAMES, or None for the device's default.
    """
    if isinstance(n, torch.Tensor):
        if n.dim() != 0 or n.is_floating_point() or n.is_complex() or n.dtype == torch.bool:
            raise TypeError(f"gather_rows: n must be an int or a 0-dim integer tensor, got "
                            f"{n.dtype} of shape {tuple(n.shape)}")
        n = int(n)
    tensors = check_gather_rows_args(tensors, index, n)
    chosen, op = backends.lookup("gather_rows", backend, index.device)
    if not tensors:
        return []
    if not chosen.checks_index_values:
        check_index_values(index[:n], tensors[0].shape[0], "gather_rows", "index")
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    return list(call(chosen, op, needs_grad, tensors, index, n))


# ----------------------------------------------------------------------------------------
# Fake kernels and autograd (shared by the compiled and the Triton ops)
# ----------------------------------------------------------------------------------------


def fake_early_exit(logits, threshold, active, out_logits, exit_step, step):
    # the checks too: on meta tensors mixed with real ones this runs instead of a kernel
    check_early_exit_args(logits, threshold, active, out_logits, exit_step, step)
    n = logits.shape[0]
    return (logits.new_empty((n,), dtype=torch.int64), logits.new_empty((), dtype=torch.int64))


def fake_gather_rows(tensors, index, n):
    check_gather_rows_args(tensors, index, n)
    return [t.new_empty((n, *t.shape[1:])) for t in tensors]


def _gather_rows_setup_context(ctx, inputs, output) -> None:
    tensors, index, n = inputs
    ctx.save_for_backward(index)
    ctx.n = n
    ctx.shapes = [t.shape for t in tensors]


def _gather_rows_backward(ctx, grads):
    """d t[index[:n]] / d t: the output rows' gradients added back to their source rows
    (index_add, so repeated indices accumulate)."""
    (index,) = ctx.saved_tensors
    rows = index[:ctx.n]
    out = []
    for shape, grad in zip(ctx.shapes, grads):
        if grad is None:
            out.append(None)
        else:
            out.append(grad.new_zeros(shape).index_add_(0, rows, grad))
    return out, None, None


def register_gather_rows_autograd(op) -> None:
    """Makes `op` (an op name or CustomOpDef with gather_rows' schema) differentiable."""
    torch.library.register_autograd(op, _gather_rows_backward,
                                    setup_context=_gather_rows_setup_context)


register_compiled("early_exit", fake_early_exit)
if register_compiled("gather_rows", fake_gather_rows):
    register_gather_rows_autograd("gfkernels::gather_rows")
