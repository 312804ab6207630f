"""gather_rows (batch compaction): the public API of the op, its metadata checks, fake kernel
and autograd (schema: csrc/ops/gather_rows.h, registered beside early_exit, whose keep index and
survivor count it takes: the loop is in early_exit.py's docstring).

gather_rows takes n as a host int, the value the loop reads from num_keep once anyway: its
outputs then have their exact shape (n, ...), so every later op of the step (and of the next
steps) runs on the surviving rows only, with no padding and no further sync. It is
differentiable wrt its floating tensors on every backend.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Union

import torch

from .. import backends
from .common import call, check_index_values, register_compiled


def check_gather_rows_call(tensors, index, n) -> List[torch.Tensor]:
    """The call's types: tensors a list or tuple of tensors, index a 1-D int64 tensor, n an
    int in [0, len(index)]; returns the tensors as a list."""
    if isinstance(tensors, torch.Tensor) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"gather_rows: tensors must be a list or tuple of tensors, got "
                        f"{type(tensors).__name__} (wrap a single tensor in a list)")
    if not isinstance(index, torch.Tensor) or index.dtype != torch.int64:
        raise TypeError(f"gather_rows: index must be an int64 tensor, got "
                        f"{getattr(index, 'dtype', type(index).__name__)}")
    if index.dim() != 1:
        raise ValueError(f"gather_rows: index must be 1-D, got shape {tuple(index.shape)}")
    if isinstance(n, bool) or not isinstance(n, (int, torch.SymInt)):
        raise TypeError(f"gather_rows: n must be an int, got {type(n).__name__}")
    if isinstance(n, int) and not 0 <= n <= index.shape[0]:  # a symbolic n: the kernels check it
        raise ValueError(f"gather_rows: n must lie in [0, {index.shape[0]}] (the length of "
                         f"index), got {n}")
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"gather_rows: tensors[{i}] must be a tensor, got {type(t).__name__}")
    return list(tensors)


def check_gather_rows_tensors(tensors: List[torch.Tensor], index: torch.Tensor) -> None:
    """Each tensor's metadata: a leading dimension shared by all, on the index's device (the
    compiled kernels check the same, with the same messages: csrc/ops/gather_rows.h)."""
    device, rows = index.device, None
    for i, t in enumerate(tensors):
        shape = t.shape
        if not shape:
            raise ValueError(f"gather_rows: tensors[{i}] must have a leading (batch) dimension, "
                             "got a 0-dim tensor")
        if rows is None:
            rows = shape[0]
        elif shape[0] != rows:
            raise ValueError(f"gather_rows: tensors[{i}] has leading size {t.shape[0]} but "
                             f"tensors[0] has {rows} (all must share the batch dimension)")
        if t.device != device:
            raise ValueError(f"gather_rows: tensors[{i}] must be on the index's device "
                             f"{device}, got {t.device}")


def check_gather_rows_args(tensors, index, n) -> List[torch.Tensor]:
    """Every metadata check (what the backends without their own, the fake kernel and the
    reference run); returns the tensors as a list."""
    tensors = check_gather_rows_call(tensors, index, n)
    check_gather_rows_tensors(tensors, index)
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
    return run_gather_rows(lambda device: backends.lookup("gather_rows", backend, device),
                           tensors, index, n)


def run_gather_rows(lookup: Callable, tensors, index, n) -> List[torch.Tensor]:
    """gather_rows' checks and call, with the backend from ``lookup(device) -> (Backend, op)``
    (gfkernels.backends.lookup, or a gfkernels.Kernels policy)."""
    if isinstance(n, torch.Tensor):
        if n.dim() != 0 or n.is_floating_point() or n.is_complex() or n.dtype == torch.bool:
            raise TypeError(f"gather_rows: n must be an int or a 0-dim integer tensor, got "
                            f"{n.dtype} of shape {tuple(n.shape)}")
        n = int(n)
    tensors = check_gather_rows_call(tensors, index, n)
    chosen, op = lookup(index.device)
    if not tensors:
        return []
    if not chosen.checks_metadata:
        check_gather_rows_tensors(tensors, index)
    if not chosen.checks_index_values:
        check_index_values(index[:n], tensors[0].shape[0], "gather_rows", "index")
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    return list(call(chosen, op, needs_grad, tensors, index, n))


# ----------------------------------------------------------------------------------------
# Fake kernel and autograd (shared by the compiled and the Triton ops)
# ----------------------------------------------------------------------------------------


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


if register_compiled("gather_rows", fake_gather_rows):
    register_gather_rows_autograd("gfkernels::gather_rows")
