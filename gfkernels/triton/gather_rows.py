"""Triton gather_rows (same semantics as gfkernels.reference; argument checks are done by
gfkernels.ops.gather_rows before it runs), registered as gfkernels_triton::gather_rows with the
autograd of gfkernels/ops/gather_rows.py.

One launch per tensor: a 2-D grid (kept row, chunk of the row); elements are moved as integers
of their size (any dtype), through up to 3 collapsed trailing dims with arbitrary strides; the
index is read with its stride. Indices are bounds-checked on the device: out of range, they
trip a device assert (Triton's debug mode) and are never dereferenced. Launches run under the
tensors' device.
"""

from __future__ import annotations

from typing import List

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake

from .. import contract
from ..ops.common import check_index_values
from ..ops.gather_rows import fake_gather_rows, register_gather_rows_autograd
from . import launch, on_device, register_op


@triton.jit
def _gather_kernel(src_ptr, dst_ptr, idx_ptr, s_idx, N, s0, d2, d3, t1, t2, t3, R,
                   BLOCK: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64)
    row = tl.load(idx_ptr + r * s_idx)
    inside = (row >= 0) & (row < N)  # rows out of range are not read (the output row is 0)
    tl.device_assert(inside, "gather_rows: index values must lie in [0, N)")
    offs = c * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = (offs < R) & inside
    i3 = offs % d3
    q = offs // d3
    i2 = q % d2
    i1 = q // d2
    v = tl.load(src_ptr + row * s0 + i1 * t1 + i2 * t2 + i3 * t3, mask=mask, other=0)
    tl.store(dst_ptr + r * R + offs, v, mask=offs < R)


_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _as_integers(t: torch.Tensor) -> torch.Tensor:
    """The same memory seen as integers of the element's size (complex128: two int64)."""
    if t.element_size() == 16:
        return torch.view_as_real(t).view(torch.int64)
    return t.view(_INT_OF_SIZE[t.element_size()])


def _collapsed_row(t: torch.Tensor):
    """Trailing dims of t (after the leading one) with size-1 dims dropped and mergeable
    dims merged: lists of sizes and strides, outermost first."""
    sizes, strides = [], []
    for d in range(1, t.dim()):
        if t.shape[d] == 1:
            continue
        if sizes and strides[-1] == t.stride(d) * t.shape[d]:
            sizes[-1] *= t.shape[d]
            strides[-1] = t.stride(d)
        else:
            sizes.append(t.shape[d])
            strides.append(t.stride(d))
    return sizes, strides


def _gather_rows_impl(tensors: List[torch.Tensor], index: torch.Tensor,
                     n: int) -> List[torch.Tensor]:
    contract.check_int("gather_rows", "n", n)
    if index.device.type == "cpu" and tensors and not is_fake(index):  # the interpreter
        check_index_values(index[:n], tensors[0].shape[0], "gather_rows", "index")
    return gather_rows_kernels(tensors, index, n)


def gather_rows_kernels(tensors: List[torch.Tensor], index: torch.Tensor, n: int) -> List[torch.Tensor]:
    """The kernels of the op, without the value checks (see early_exit_kernels)."""
    outs = []
    rows = index[:n]
    with on_device(index):
        for t in tensors:
            out = torch.empty((n, *t.shape[1:]), dtype=t.dtype, device=t.device)
            outs.append(out)
            R = out[0].numel() if n > 0 else 0
            if n == 0 or R == 0:
                continue
            src = t
            sizes, strides = _collapsed_row(src)
            if len(sizes) > 3:  # rare: more than 3 non-mergeable trailing dims
                src = src.contiguous()
                sizes, strides = _collapsed_row(src)
            src_i, dst_i = _as_integers(src), _as_integers(out)
            if t.element_size() == 16:  # view_as_real doubled the innermost dim
                sizes, strides = _collapsed_row(src_i)
                R *= 2
            sizes = [1] * (3 - len(sizes)) + sizes
            strides = [0] * (3 - len(strides)) + strides
            block = min(triton.next_power_of_2(R), 1024)
            grid = (n, triton.cdiv(R, block))
            if grid[1] > 65535:
                raise ValueError(f"gather_rows: rows of {R} elements are too long for the Triton "
                                 "kernel (at most 65535 * 1024)")
            launch(_gather_kernel)[grid](src_i, dst_i, rows, rows.stride(0), t.shape[0],
                                         src_i.stride(0), sizes[1], sizes[2], strides[0],
                                         strides[1], strides[2], R, BLOCK=block)
    return outs


gather_rows_op = register_op("gather_rows", _gather_rows_impl, fake=fake_gather_rows)
register_gather_rows_autograd(gather_rows_op)
