"""Triton early_exit and gather_rows (same semantics as gfkernels.reference; argument checks
are done by gfkernels.ops.early_exit before these run), registered as
gfkernels_triton::early_exit and gfkernels_triton::gather_rows (gather_rows with the autograd
of gfkernels/ops/early_exit.py).

early_exit is two launches and reads nothing on the host: one program per row computes the
confidence (online max / sum-exp over chunks of K, float32 or float64, a correctly rounded
1 / sum), writes the exiting row's logits and step to its place in the full batch and its exit
flag; then a single program scans the flags in tiles (tl.cumsum with a running carry) into keep
(survivors first, then the exiting rows, both in order) and num_keep.

gather_rows is one launch per tensor: a 2-D grid (kept row, chunk of the row); elements are
moved as integers of their size (any dtype), through up to 3 collapsed trailing dims with
arbitrary strides; the index is read with its stride.

Indices read from tensors (active, the gathered rows) are bounds-checked on the device: out of
range, they trip a device assert (Triton's debug mode) and are never dereferenced. Launches run
under the tensors' device.
"""

from __future__ import annotations

import struct
from typing import List, Tuple

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake

from .. import contract
from ..ops.common import check_index_values
from ..ops.early_exit import fake_early_exit, fake_gather_rows, register_gather_rows_autograd
from . import launch, on_device, register_op


@triton.jit(do_not_specialize=["K", "thr_bits", "step", "B"])
def _confidence_kernel(logits_ptr, s_n, s_k, K, thr_ptr, thr_bits, active_ptr, s_a,
                       out_ptr, o_n, o_k, steps_ptr, s_step, step, B, flags_ptr,
                       THR_FROM_PTR: tl.constexpr, ACC_F64: tl.constexpr,
                       BLOCK_K: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    acc = tl.float64 if ACC_F64 else tl.float32
    if THR_FROM_PTR:
        thr = tl.load(thr_ptr).to(acc)
    else:  # a host value passed as its float64 bits (a Python int: i32 when it fits, else i64)
        thr = thr_bits.to(tl.int64).to(tl.float64, bitcast=True).to(acc)
    all_exit = thr == float("-inf")
    row = logits_ptr + i * s_n
    cols = tl.arange(0, BLOCK_K)
    # online softmax statistics: running max m and sum of exp(x - m)
    m = tl.full([], float("-inf"), acc)
    s = tl.zeros([], acc)
    bad = tl.zeros([], tl.int32)  # a NaN seen
    for start in range(0, K, BLOCK_K):
        mask = start + cols < K
        x = tl.load(row + (start + cols) * s_k, mask=mask, other=float("-inf")).to(acc)
        bad = bad | tl.max((x != x).to(tl.int32), axis=0)
        m_new = tl.maximum(m, tl.max(tl.where(x != x, float("-inf"), x), axis=0))
        # exp(m - m_new) is NaN only when both are -inf (s is 0 then) or m_new is +inf
        scale = tl.where(m == m_new, 1.0, tl.exp(m - m_new))
        s = s * scale + tl.sum(tl.where(mask, tl.exp(x - m_new), 0.0), axis=0)
        m = m_new
    # Correctly rounded, as the CUDA kernel and the reference divide (Triton's float32 `/`
    # is an approximate division): a confidence equal to the threshold exits on every backend.
    if ACC_F64:
        conf = 1.0 / s
    else:
        conf = tl.math.div_rn(tl.full([], 1.0, tl.float32), s)
    # softmax is undefined (NaN) with a NaN logit, a +inf max or every logit -inf
    undefined = (bad != 0) | (m == float("inf")) | (m == float("-inf"))
    exits = all_exit | ((conf >= thr) & (~undefined))
    tl.store(flags_ptr + i, exits.to(tl.int32))
    a = tl.load(active_ptr + i * s_a)
    inside = (a >= 0) & (a < B)  # active values out of range are never written through
    tl.device_assert(inside | (exits == 0), "early_exit: active values must lie in [0, B)")
    if exits & inside:
        dst = out_ptr + a * o_n
        for start in range(0, K, BLOCK_K):
            mask = start + cols < K
            x = tl.load(row + (start + cols) * s_k, mask=mask)
            tl.store(dst + (start + cols) * o_k, x, mask=mask)
        tl.store(steps_ptr + a * s_step, step.to(tl.int64))


@triton.jit(do_not_specialize=["n"])
def _compact_kernel(flags_ptr, keep_ptr, num_keep_ptr, n, BLOCK: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    total = tl.zeros([], tl.int64)
    for start in range(0, n, BLOCK):
        mask = start + cols < n
        f = tl.load(flags_ptr + start + cols, mask=mask, other=1)
        total += tl.sum((1 - f).to(tl.int64), axis=0)
    kept = tl.zeros([], tl.int64)
    gone = total
    for start in range(0, n, BLOCK):
        offs = start + cols
        mask = offs < n
        f = tl.load(flags_ptr + offs, mask=mask, other=0)
        survive = (mask & (f == 0)).to(tl.int64)
        leave = (mask & (f != 0)).to(tl.int64)
        cs = tl.cumsum(survive, axis=0)  # inclusive
        cl = tl.cumsum(leave, axis=0)
        tl.store(keep_ptr + kept + cs - 1, offs.to(tl.int64), mask=survive != 0)
        tl.store(keep_ptr + gone + cl - 1, offs.to(tl.int64), mask=leave != 0)
        kept += tl.sum(survive, axis=0)
        gone += tl.sum(leave, axis=0)
    tl.store(num_keep_ptr, total)


def _early_exit_impl(logits: torch.Tensor, threshold: torch.Tensor, active: torch.Tensor,
                     out_logits: torch.Tensor, exit_step: torch.Tensor,
                     step: int) -> Tuple[torch.Tensor, torch.Tensor]:
    contract.check_int("early_exit", "step", step)
    if threshold.device.type == "cpu" and not is_fake(threshold):  # a host value: no sync
        contract.check_threshold_value(threshold)
    if logits.device.type == "cpu" and not is_fake(active):  # the interpreter: values cost no sync
        check_index_values(active, out_logits.shape[0], "early_exit", "active")
        contract.check_distinct("early_exit", "active", active)
    return early_exit_kernels(logits, threshold, active, out_logits, exit_step, step)


def early_exit_kernels(logits: torch.Tensor, threshold: torch.Tensor, active: torch.Tensor,
                       out_logits: torch.Tensor, exit_step: torch.Tensor,
                       step: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The kernels of the op, without the value checks: what runs on a GPU, where values are not
    read on the host (the tests call it on CPU tensors to see that bad values stay in bounds)."""
    n, K = logits.shape
    device = logits.device
    keep = torch.empty((n,), dtype=torch.int64, device=device)
    if n == 0:
        return keep, torch.zeros((), dtype=torch.int64, device=device)
    num_keep = torch.empty((), dtype=torch.int64, device=device)  # written by _compact_kernel
    acc_f64 = logits.dtype == torch.float64
    thr_bits = 0
    if threshold.device != device and is_fake(threshold):
        # a traced (fake) threshold has no value to read: load it from the device instead
        threshold = threshold.to(device, non_blocking=True)
    thr_from_ptr = threshold.device.type != "cpu" or is_fake(threshold)
    if not thr_from_ptr:
        # a CPU scalar: read on the host (no device sync) and passed as the bits of its float64
        # value (a Triton float argument is float32: not exact for float64 logits); the kernel
        # rounds it to the accumulation type, as the other backends do
        thr_bits = struct.unpack("<q", struct.pack("<d", float(threshold.to(torch.float64))))[0]
    flags = torch.empty((n,), dtype=torch.int32, device=device)
    block_k = min(triton.next_power_of_2(K), 2048)
    with on_device(logits):
        launch(_confidence_kernel)[(n,)](
            logits, logits.stride(0), logits.stride(1), K, threshold, thr_bits, active,
            active.stride(0), out_logits, out_logits.stride(0), out_logits.stride(1), exit_step,
            exit_step.stride(0), step, out_logits.shape[0], flags, THR_FROM_PTR=thr_from_ptr,
            ACC_F64=acc_f64, BLOCK_K=block_k)
        launch(_compact_kernel)[(1,)](flags, keep, num_keep, n, BLOCK=1024)
    return keep, num_keep


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


early_exit_op = register_op("early_exit", _early_exit_impl,
                            mutates_args=("out_logits", "exit_step"),
                            fake=fake_early_exit)
gather_rows_op = register_op("gather_rows", _gather_rows_impl, fake=fake_gather_rows)
register_gather_rows_autograd(gather_rows_op)
