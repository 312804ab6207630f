"""Triton early_exit (same semantics as gfkernels.reference; argument checks are done by
gfkernels.ops.early_exit before it runs), registered as gfkernels_triton::early_exit
(gather_rows, the compaction after it, is in gather_rows.py).

early_exit is two launches and reads nothing on the host: one program per row computes the
confidence (online max / sum-exp over chunks of K, float32 or float64, a correctly rounded
1 / sum), writes the exiting row's logits and step to its place in the full batch and its exit
flag; then a single program scans the flags in tiles (tl.cumsum with a running carry) into keep
(survivors first, then the exiting rows, both in order) and num_keep.

Indices read from tensors (active, the gathered rows) are bounds-checked on the device: out of
range, they trip a device assert (Triton's debug mode) and are never dereferenced. Launches run
under the tensors' device.
"""

from __future__ import annotations

import struct
from typing import Tuple

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake

from .. import contract
from ..ops.common import check_index_values
from ..ops.early_exit import fake_early_exit
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
        # the pointer argument is never read (THR_FROM_PTR is off) but Triton refuses a host
        # pointer on a GPU launch: pass any tensor of the device
        threshold = logits
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


early_exit_op = register_op("early_exit", _early_exit_impl,
                            mutates_args=("out_logits", "exit_step"),
                            fake=fake_early_exit)
