"""crop_resize as Triton kernels: forward, backward wrt images (atomics, or a deterministic
gather under torch.use_deterministic_algorithms(True)) and backward wrt boxes.

The same op as the compiled kernels (docs/OPS.md, and csrc/sampling.h, whose maths these
kernels restate: source positions and Keys' cubic weights are computed in float64 with the
same expressions, so taps agree bit for bit). Registered as gfkernels_triton::crop_resize and
its two backward ops (see gfkernels/triton/__init__.py), with the autograd of
gfkernels/ops/crop_resize.py. Runs on CUDA tensors, and on CPU tensors under
TRITON_INTERPRET=1.

No host syncs and one launch per forward: boxes are read in their own dtype and strides,
batch_index with its stride, and the normalisation table is built on the device once per
normalisation (_affine). Nothing is read out of bounds whatever the values: positions are
clamped to [-4, size + 4] (NaN -> -4) and batch_index values to [0, N) after a device assert
(active in Triton's debug mode); an empty image batch with boxes is refused on the host.
Launches run under the tensors' device (on_device).
"""

import math
from typing import Dict, List, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake

from .. import contract
from ..ops.common import check_index_values
from ..ops.crop_resize import (fake_backward_boxes, fake_backward_images, fake_crop_resize,
                               register_autograd)
from . import launch, on_device, register_op

_MODES = {"nearest": 0, "bilinear": 1, "bicubic": 2}
_TAPS = {0: 1, 1: 2, 2: 4}
_CUBIC_A = -0.75
_NUM_WARPS = 4


# ----------------------------------------------------------------------------------------
# Shared device maths (mirrors csrc/sampling.h)
# ----------------------------------------------------------------------------------------


@triton.jit
def _position(lo, hi, of, out, ALIGN: tl.constexpr):
    """Source position of output index `of` (float64, any shape) for the box edges lo, hi
    (float64), with sampling.h's expressions (so the same rounding). Written with arithmetic
    only, so that integer arguments Triton specialises to constants work too."""
    extent = hi - lo
    if ALIGN:
        single = out == 1
        den = (out - 1 + single) * 1.0
        # out == 1 (then of == 0): lo + (extent - 1) / 2; else lo + of * (extent - 1) / (out - 1).
        # A where, not (extent - 1) * (single * 0.5): that is inf * 0 = NaN at every position
        # when the extent overflows float64 (a finite box like [-1e308, 1e308])
        x = lo + of * (extent - 1.0) / den + tl.where(single, (extent - 1.0) * 0.5, 0.0)
    else:
        x = lo + (of + 0.5) * extent / out - 0.5
    return x


@triton.jit
def _position_dhi(of, out, ALIGN: tl.constexpr):
    """d position / d hi (d / d lo is one minus this)."""
    if ALIGN:
        single = out == 1
        f = of / ((out - 1 + single) * 1.0) + single * 0.5
    else:
        f = (of + 0.5) / out
    return f


@triton.jit
def _clamp_position(x, size):
    x = tl.where(x == x, x, -4.0)  # NaN reads the border, never out of bounds
    return tl.minimum(tl.maximum(x, -4.0), size + 4.0)


@triton.jit
def _tap(first, k: tl.constexpr, size, w, dw, ZEROS: tl.constexpr):
    i = first + k
    if ZEROS:
        inside = (i >= 0) & (i < size)
        w = tl.where(inside, w, 0.0)
        dw = tl.where(inside, dw, 0.0)
    i = tl.minimum(tl.maximum(i, 0), size - 1)
    return i, w, dw


@triton.jit
def _taps(x, size, MODE: tl.constexpr, ZEROS: tl.constexpr):
    """Taps of positions x (f64): indices (int32, inside the image), weights and
    d weight / d position (f64). Unused taps (k >= taps of the mode) have weight 0."""
    x = _clamp_position(x, size)
    zero = tl.zeros_like(x)
    if MODE == 0:
        first = tl.floor(x + 0.5).to(tl.int32)
        w0 = zero + 1.0
        w1 = zero
        w2 = zero
        w3 = zero
        d0 = zero
        d1 = zero
        d2 = zero
        d3 = zero
    elif MODE == 1:
        f = tl.floor(x)
        t = x - f
        first = f.to(tl.int32)
        w0 = 1.0 - t
        w1 = t
        w2 = zero
        w3 = zero
        d0 = zero - 1.0
        d1 = zero + 1.0
        d2 = zero
        d3 = zero
    else:
        a = -0.75
        f = tl.floor(x)
        t = x - f
        first = f.to(tl.int32) - 1
        t1 = t + 1.0
        s = 1.0 - t
        s1 = 2.0 - t
        w0 = ((a * t1 - 5.0 * a) * t1 + 8.0 * a) * t1 - 4.0 * a
        w1 = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
        w2 = ((a + 2.0) * s - (a + 3.0)) * s * s + 1.0
        w3 = ((a * s1 - 5.0 * a) * s1 + 8.0 * a) * s1 - 4.0 * a
        d0 = (3.0 * a * t1 - 10.0 * a) * t1 + 8.0 * a
        d1 = (3.0 * (a + 2.0) * t - 2.0 * (a + 3.0)) * t
        d2 = -((3.0 * (a + 2.0) * s - 2.0 * (a + 3.0)) * s)
        d3 = -((3.0 * a * s1 - 10.0 * a) * s1 + 8.0 * a)
    i0, w0, d0 = _tap(first, 0, size, w0, d0, ZEROS)
    i1, w1, d1 = _tap(first, 1, size, w1, d1, ZEROS)
    i2, w2, d2 = _tap(first, 2, size, w2, d2, ZEROS)
    i3, w3, d3 = _tap(first, 3, size, w3, d3, ZEROS)
    return i0, i1, i2, i3, w0, w1, w2, w3, d0, d1, d2, d3


@triton.jit
def _cast4(a0, a1, a2, a3, DT: tl.constexpr):
    """Four tap values (weights) converted to DT."""
    return a0.to(DT), a1.to(DT), a2.to(DT), a3.to(DT)


@triton.jit
def _offsets4(i0, i1, i2, i3, stride):
    """Four tap indices as int64 element offsets along an axis of the given stride."""
    return (i0.to(tl.int64) * stride, i1.to(tl.int64) * stride, i2.to(tl.int64) * stride,
            i3.to(tl.int64) * stride)


@triton.jit
def _pixel_taps(x1, y1, x2, y2, i, j, h, w, H, W, MODE: tl.constexpr, ZEROS: tl.constexpr,
                ALIGN: tl.constexpr, ACC: tl.constexpr):
    """The row taps and the column taps of output pixels (i, j) of box (x1, y1, x2, y2):
    indices, then weights (in ACC), rows first."""
    iy0, iy1, iy2, iy3, wy0, wy1, wy2, wy3, _d0, _d1, _d2, _d3 = _taps(
        _position(y1, y2, i.to(tl.float64), h, ALIGN), H, MODE, ZEROS)
    ix0, ix1, ix2, ix3, wx0, wx1, wx2, wx3, _e0, _e1, _e2, _e3 = _taps(
        _position(x1, x2, j.to(tl.float64), w, ALIGN), W, MODE, ZEROS)
    wy0, wy1, wy2, wy3 = _cast4(wy0, wy1, wy2, wy3, ACC)
    wx0, wx1, wx2, wx3 = _cast4(wx0, wx1, wx2, wx3, ACC)
    return iy0, iy1, iy2, iy3, wy0, wy1, wy2, wy3, ix0, ix1, ix2, ix3, wx0, wx1, wx2, wx3


@triton.jit
def _row(ptr, o0, o1, o2, o3, w0, w1, w2, w3, mask, NT: tl.constexpr, ACC: tl.constexpr):
    """sum_k w_k * ptr[o_k] over the NT column taps."""
    r = w0 * tl.load(ptr + o0, mask=mask, other=0).to(ACC)
    if NT > 1:
        r += w1 * tl.load(ptr + o1, mask=mask, other=0).to(ACC)
    if NT > 2:
        r += w2 * tl.load(ptr + o2, mask=mask, other=0).to(ACC)
        r += w3 * tl.load(ptr + o3, mask=mask, other=0).to(ACC)
    return r


@triton.jit
def _sample(plane, oy0, oy1, oy2, oy3, wy0, wy1, wy2, wy3, ox0, ox1, ox2, ox3, wx0, wx1, wx2,
            wx3, mask, NT: tl.constexpr, ACC: tl.constexpr):
    v = wy0 * _row(plane + oy0, ox0, ox1, ox2, ox3, wx0, wx1, wx2, wx3, mask, NT, ACC)
    if NT > 1:
        v += wy1 * _row(plane + oy1, ox0, ox1, ox2, ox3, wx0, wx1, wx2, wx3, mask, NT, ACC)
    if NT > 2:
        v += wy2 * _row(plane + oy2, ox0, ox1, ox2, ox3, wx0, wx1, wx2, wx3, mask, NT, ACC)
        v += wy3 * _row(plane + oy3, ox0, ox1, ox2, ox3, wx0, wx1, wx2, wx3, mask, NT, ACC)
    return v


@triton.jit
def _image_of(batch_index, s_bi, b, N, HAS_BI: tl.constexpr):
    """The image box b reads. Out-of-range batch_index values trip a device assert (debug
    builds) and are clamped, so nothing is read out of bounds (the host ensures N >= 1)."""
    if HAS_BI:
        n = tl.load(batch_index + b * s_bi)
        tl.device_assert((n >= 0) & (n < N), "crop_resize: batch_index values must lie in [0, N)")
        n = tl.minimum(tl.maximum(n, 0), N - 1)
    else:
        n = b
    return n.to(tl.int64)


@triton.jit
def _is_exact(lo, hi, out, size):
    return (lo == tl.floor(lo)) & (hi - lo == out) & (lo >= 0.0) & (hi <= size)


# ----------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------


@triton.jit
def _load_box(boxes, sb0, sb1, b):
    """Box b as (x1, y1, x2, y2) in float64, from float32 or float64 boxes of any strides."""
    row = boxes + b.to(tl.int64) * sb0
    return (tl.load(row).to(tl.float64), tl.load(row + sb1).to(tl.float64),
            tl.load(row + 2 * sb1).to(tl.float64), tl.load(row + 3 * sb1).to(tl.float64))


@triton.jit
def _output_tile(h, w, BLOCK: tl.constexpr):
    """The box b and the BLOCK output pixels p = i * w + j of this program (one program per
    BLOCK pixels of one box's h x w output)."""
    hw = h * w
    pid = tl.program_id(0)
    nblk = tl.cdiv(hw, BLOCK)
    b = pid // nblk
    p = (pid % nblk) * BLOCK + tl.arange(0, BLOCK)
    return b, p, p < hw, p // w, p % w


@triton.jit
def _to_output(v, DT: tl.constexpr):
    """v (float32 or float64) as the output dtype DT. bfloat16 is reached through float32:
    Triton's interpreter converts float64 to bfloat16 wrongly (it reads the float64 bits as if
    narrower: tiny values and NaN instead of the number); on a GPU the two roundings give the
    correctly rounded bfloat16 except at an exact float32 tie, one ulp apart at most."""
    if DT == tl.bfloat16:
        return v.to(tl.float32).to(DT)
    return v.to(DT)


@triton.jit
def _forward_kernel(img, boxes, sb0, sb1, batch_index, s_bi, out, affine, N, C, H, W, sN, sC,
                    sH, sW, h, w, HAS_BI: tl.constexpr, MODE: tl.constexpr, NT: tl.constexpr,
                    ZEROS: tl.constexpr, ALIGN: tl.constexpr, ACC64: tl.constexpr,
                    BLOCK: tl.constexpr):
    ACC: tl.constexpr = tl.float64 if ACC64 else tl.float32
    hw = h * w
    b, p, mask, i, j = _output_tile(h, w, BLOCK)
    n = _image_of(batch_index, s_bi, b, N, HAS_BI)
    x1, y1, x2, y2 = _load_box(boxes, sb0, sb1, b)
    # c * sC and c * hw stay below 2^31 (the host checks the image's and the crop's span).
    plane0 = img + n * sN
    dst = out + b.to(tl.int64) * C * hw + p
    exact = _is_exact(x1, x2, w, W) & _is_exact(y1, y2, h, H)
    if exact:
        # Fast path: an integer box of the output's size is a copy.
        off = (y1.to(tl.int64) + i) * sH + (x1.to(tl.int64) + j) * sW
        for c in range(C):
            v = tl.load(plane0 + c * sC + off, mask=mask, other=0).to(ACC)
            sc = tl.load(affine + c).to(ACC)
            sh = tl.load(affine + C + c).to(ACC)
            tl.store(dst + c * hw, _to_output(v * sc + sh, out.dtype.element_ty), mask=mask)
    else:
        (iy0, iy1, iy2, iy3, wy0, wy1, wy2, wy3, ix0, ix1, ix2, ix3, wx0, wx1, wx2,
         wx3) = _pixel_taps(x1, y1, x2, y2, i, j, h, w, H, W, MODE, ZEROS, ALIGN, ACC)
        oy0, oy1, oy2, oy3 = _offsets4(iy0, iy1, iy2, iy3, sH)
        ox0, ox1, ox2, ox3 = _offsets4(ix0, ix1, ix2, ix3, sW)
        for c in range(C):
            v = _sample(plane0 + c * sC, oy0, oy1, oy2, oy3, wy0, wy1, wy2, wy3, ox0, ox1, ox2,
                        ox3, wx0, wx1, wx2, wx3, mask, NT, ACC)
            sc = tl.load(affine + c).to(ACC)
            sh = tl.load(affine + C + c).to(ACC)
            tl.store(dst + c * hw, _to_output(v * sc + sh, out.dtype.element_ty), mask=mask)


@triton.jit
def _scatter_row(ptr, o0, o1, o2, o3, w0, w1, w2, w3, g, mask, NT: tl.constexpr):
    # Relaxed: the adds only accumulate; nothing in the kernel is ordered against them.
    tl.atomic_add(ptr + o0, w0 * g, mask=mask & (w0 != 0), sem="relaxed")
    if NT > 1:
        tl.atomic_add(ptr + o1, w1 * g, mask=mask & (w1 != 0), sem="relaxed")
    if NT > 2:
        tl.atomic_add(ptr + o2, w2 * g, mask=mask & (w2 != 0), sem="relaxed")
        tl.atomic_add(ptr + o3, w3 * g, mask=mask & (w3 != 0), sem="relaxed")


@triton.jit
def _backward_images_atomic_kernel(grad, boxes, sb0, sb1, batch_index, s_bi, grad_images, affine,
                                   N, C, H, W, h, w, HAS_BI: tl.constexpr, MODE: tl.constexpr,
                                   NT: tl.constexpr, ZEROS: tl.constexpr, ALIGN: tl.constexpr,
                                   ACC64: tl.constexpr, BLOCK: tl.constexpr):
    ACC: tl.constexpr = tl.float64 if ACC64 else tl.float32
    hw = h * w
    b, p, mask, i, j = _output_tile(h, w, BLOCK)
    n = _image_of(batch_index, s_bi, b, N, HAS_BI)
    x1, y1, x2, y2 = _load_box(boxes, sb0, sb1, b)
    planes = grad_images + n * C * H * W
    src = grad + b.to(tl.int64) * C * hw + p
    (iy0, iy1, iy2, iy3, wy0, wy1, wy2, wy3, ix0, ix1, ix2, ix3, wx0, wx1, wx2,
     wx3) = _pixel_taps(x1, y1, x2, y2, i, j, h, w, H, W, MODE, ZEROS, ALIGN, ACC)
    for c in range(C):
        g = tl.load(src + c * hw, mask=mask, other=0).to(ACC) * tl.load(affine + c).to(ACC)
        m = mask & (g != 0)
        plane = planes + c * H * W
        _scatter_row(plane + iy0.to(tl.int64) * W, ix0, ix1, ix2, ix3, wy0 * wx0, wy0 * wx1,
                     wy0 * wx2, wy0 * wx3, g, m, NT)
        if NT > 1:
            _scatter_row(plane + iy1.to(tl.int64) * W, ix0, ix1, ix2, ix3, wy1 * wx0, wy1 * wx1,
                         wy1 * wx2, wy1 * wx3, g, m, NT)
        if NT > 2:
            _scatter_row(plane + iy2.to(tl.int64) * W, ix0, ix1, ix2, ix3, wy2 * wx0, wy2 * wx1,
                         wy2 * wx2, wy2 * wx3, g, m, NT)
            _scatter_row(plane + iy3.to(tl.int64) * W, ix0, ix1, ix2, ix3, wy3 * wx0, wy3 * wx1,
                         wy3 * wx2, wy3 * wx3, g, m, NT)


@triton.jit
def _axis_table_kernel(boxes, sb0, sb1, lo_col, hi_col, total, out, size, index, weight, span,
                       MODE: tl.constexpr, NT: tl.constexpr, ZEROS: tl.constexpr,
                       ALIGN: tl.constexpr, ACC64: tl.constexpr, BLOCK: tl.constexpr):
    """Taps of every (box, output index) along one axis: index[.,4] (-1 unused), weight[.,4],
    span[.,2] = (smallest, largest) index read."""
    ACC: tl.constexpr = tl.float64 if ACC64 else tl.float32
    t = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = t < total
    b = t // out
    o = t % out
    row = boxes + b.to(tl.int64) * sb0
    lo = tl.load(row + lo_col * sb1, mask=mask, other=0.0).to(tl.float64)
    hi = tl.load(row + hi_col * sb1, mask=mask, other=0.0).to(tl.float64)
    i0, i1, i2, i3, w0, w1, w2, w3, _d0, _d1, _d2, _d3 = _taps(_position(lo, hi, o.to(tl.float64), out, ALIGN),
                                                               size, MODE, ZEROS)
    base = t.to(tl.int64) * 4
    tl.store(index + base + 0, i0, mask=mask)
    tl.store(weight + base + 0, w0.to(ACC), mask=mask)
    smallest = i0
    largest = i0
    if NT > 1:
        tl.store(index + base + 1, i1, mask=mask)
        tl.store(weight + base + 1, w1.to(ACC), mask=mask)
        smallest = tl.minimum(smallest, i1)
        largest = tl.maximum(largest, i1)
    else:
        tl.store(index + base + 1, i1 * 0 - 1, mask=mask)
        tl.store(weight + base + 1, w1.to(ACC) * 0, mask=mask)
    if NT > 2:
        tl.store(index + base + 2, i2, mask=mask)
        tl.store(weight + base + 2, w2.to(ACC), mask=mask)
        tl.store(index + base + 3, i3, mask=mask)
        tl.store(weight + base + 3, w3.to(ACC), mask=mask)
        smallest = tl.minimum(tl.minimum(smallest, i2), i3)
        largest = tl.maximum(tl.maximum(largest, i2), i3)
    else:
        tl.store(index + base + 2, i2 * 0 - 1, mask=mask)
        tl.store(weight + base + 2, w2.to(ACC) * 0, mask=mask)
        tl.store(index + base + 3, i3 * 0 - 1, mask=mask)
        tl.store(weight + base + 3, w3.to(ACC) * 0, mask=mask)
    tl.store(span + t.to(tl.int64) * 2 + 0, smallest, mask=mask)
    tl.store(span + t.to(tl.int64) * 2 + 1, largest, mask=mask)


@triton.jit
def _first_true(span, x, out, FIELD: tl.constexpr, KIND: tl.constexpr, steps, mask):
    """Smallest o in [0, out] with pred(span[o, FIELD], x) (monotone false..true), per lane.
    KIND: 0 ">= x", 1 "> x", 2 "<= x", 3 "< x"."""
    a = tl.zeros_like(x)
    z = a + out
    for _ in range(steps):
        m = (a + z) // 2
        active = mask & (a < z)
        v = tl.load(span + m.to(tl.int64) * 2 + FIELD, mask=active & (m < out), other=0)
        if KIND == 0:
            pred = v >= x
        elif KIND == 1:
            pred = v > x
        elif KIND == 2:
            pred = v <= x
        else:
            pred = v < x
        z = tl.where(active & pred, m, z)
        a = tl.where(active & (pred == 0), m + 1, a)
    return a


@triton.jit
def _axis_range_kernel(boxes, sb0, sb1, lo_col, hi_col, B, out, size, span, rng, steps,
                       ALIGN: tl.constexpr, BLOCK: tl.constexpr):
    """rng[b, x] = (first, last) output indices whose taps touch pixel x (first > last: none).
    Positions, hence clamped taps, are monotone in the output index. One program per BLOCK
    pixels of one box, the box folded into grid axis 0 (axis 1 stops at 65535)."""
    nblk = tl.cdiv(size, BLOCK)
    pid = tl.program_id(0)
    b = pid // nblk
    x = (pid % nblk) * BLOCK + tl.arange(0, BLOCK)
    mask = x < size
    row = boxes + b.to(tl.int64) * sb0
    lo = tl.load(row + lo_col * sb1).to(tl.float64)
    hi = tl.load(row + hi_col * sb1).to(tl.float64)
    p0 = _clamp_position(_position(lo, hi, 0.0, out, ALIGN), size)
    p1 = _clamp_position(_position(lo, hi, (out - 1) * 1.0, out, ALIGN), size)
    s = span + b.to(tl.int64) * out * 2
    if p1 < p0:
        first = _first_true(s, x, out, 0, 2, steps, mask)
        last = _first_true(s, x, out, 1, 3, steps, mask) - 1
    else:
        first = _first_true(s, x, out, 1, 0, steps, mask)
        last = _first_true(s, x, out, 0, 1, steps, mask) - 1
    base = (b.to(tl.int64) * size + x) * 2
    tl.store(rng + base, first, mask=mask)
    tl.store(rng + base + 1, last, mask=mask)


@triton.jit
def _match(index, weight, base, pixel, ACC: tl.constexpr):
    """Weight with which the taps at base read `pixel` (clamped taps may repeat: summed)."""
    v = tl.where(tl.load(index + base) == pixel, tl.load(weight + base), 0.0).to(ACC)
    v += tl.where(tl.load(index + base + 1) == pixel, tl.load(weight + base + 1), 0.0).to(ACC)
    v += tl.where(tl.load(index + base + 2) == pixel, tl.load(weight + base + 2), 0.0).to(ACC)
    v += tl.where(tl.load(index + base + 3) == pixel, tl.load(weight + base + 3), 0.0).to(ACC)
    return v


@triton.jit
def _backward_images_gather_kernel(grad, order, offsets, grad_images, affine, C, H, W, h, w,
                                   yindex, yweight, yrange, xindex, xweight, xrange,
                                   HAS_BI: tl.constexpr, ACC64: tl.constexpr, BY: tl.constexpr,
                                   BX: tl.constexpr, BJ: tl.constexpr):
    """One program per (n, c, BY x BX tile of the image plane): a fixed-order sum over the
    boxes of image n (CSR), over the output rows i whose taps touch the tile's rows and over
    chunks of BJ output columns touching its columns:
        acc[y, x] += wy[i, y] * sum_j g[b, c, i, j] * wx[j, x]
    with wx of a chunk held as a (BJ, BX) tile and wy from the row tap table."""
    ACC: tl.constexpr = tl.float64 if ACC64 else tl.float32
    pid = tl.program_id(0)
    nxb = tl.cdiv(W, BX)
    nyb = tl.cdiv(H, BY)
    xb = pid % nxb
    rest = pid // nxb
    yb = rest % nyb
    nc = rest // nyb
    c = nc % C
    n = nc // C
    ys = yb * BY + tl.arange(0, BY)
    xs = xb * BX + tl.arange(0, BX)
    ymask = ys < H
    xmask = xs < W
    if HAS_BI:
        k0 = tl.load(offsets + n)
        k1 = tl.load(offsets + n + 1)
    else:
        k0 = n
        k1 = n + 1
    acc = tl.zeros([BY, BX], dtype=ACC)
    for k in range(k0, k1):
        if HAS_BI:
            b = tl.load(order + k)
        else:
            b = k
        b = b.to(tl.int64)
        i0 = tl.load(yrange + (b * H + ys) * 2, mask=ymask, other=0)
        i1 = tl.load(yrange + (b * H + ys) * 2 + 1, mask=ymask, other=-1)
        some = ymask & (i0 <= i1)
        ilo = tl.min(tl.where(some, i0, 2147483647), axis=0)
        ihi = tl.max(tl.where(some, i1, -1), axis=0)
        j0 = tl.load(xrange + (b * W + xs) * 2, mask=xmask, other=0)
        j1 = tl.load(xrange + (b * W + xs) * 2 + 1, mask=xmask, other=-1)
        some = xmask & (j0 <= j1)
        jlo = tl.min(tl.where(some, j0, 2147483647), axis=0)
        jhi = tl.max(tl.where(some, j1, -1), axis=0)
        for jc in range(jlo, jhi + 1, BJ):
            jj = jc + tl.arange(0, BJ)
            jmask = jj <= jhi
            tbase = (b * w + jj) * 4
            wx = tl.zeros([BJ, BX], dtype=ACC)
            for t in tl.static_range(4):
                idx = tl.load(xindex + tbase + t, mask=jmask, other=-1)
                wt = tl.load(xweight + tbase + t, mask=jmask, other=0).to(ACC)
                wx += tl.where(idx[:, None] == xs[None, :], wt[:, None], 0.0)
            for i in range(ilo, ihi + 1):
                wy = _match(yindex, yweight, (b * h + i) * 4, ys, ACC)
                g = tl.load(grad + ((b * C + c) * h + i) * w + jj, mask=jmask, other=0).to(ACC)
                r = tl.sum(g[:, None] * wx, axis=0)
                acc += wy[:, None] * r[None, :]
    scale = tl.load(affine + c).to(ACC)
    ptrs = grad_images + ((n.to(tl.int64) * C + c) * H + ys[:, None]) * W + xs[None, :]
    tl.store(ptrs, acc * scale, mask=ymask[:, None] & xmask[None, :])


@triton.jit
def _row2(ptr, o0, o1, o2, o3, w0, w1, w2, w3, d0, d1, d2, d3, mask, NT: tl.constexpr):
    """(sum_k w_k v_k, sum_k dw_k v_k) over the NT column taps, in float64."""
    v = tl.load(ptr + o0, mask=mask, other=0).to(tl.float64)
    r = w0 * v
    dr = d0 * v
    if NT > 1:
        v = tl.load(ptr + o1, mask=mask, other=0).to(tl.float64)
        r += w1 * v
        dr += d1 * v
    if NT > 2:
        v = tl.load(ptr + o2, mask=mask, other=0).to(tl.float64)
        r += w2 * v
        dr += d2 * v
        v = tl.load(ptr + o3, mask=mask, other=0).to(tl.float64)
        r += w3 * v
        dr += d3 * v
    return r, dr


@triton.jit
def _backward_boxes_kernel(grad, img, boxes, sb0, sb1, batch_index, s_bi, affine, partial, N, C,
                           H, W, sN, sC, sH, sW, h, w, S, HAS_BI: tl.constexpr, MODE: tl.constexpr,
                           NT: tl.constexpr, ZEROS: tl.constexpr, ALIGN: tl.constexpr,
                           BLOCK: tl.constexpr):
    """Program b * S + s sums the box-gradient contributions of pixels s*BLOCK + k*S*BLOCK +
    ... in float64 and writes partial[b, s, 0:4] = (dx1, dy1, dx2, dy2) partial sums. The box
    is folded into grid axis 0 (axis 1 stops at 65535 boxes)."""
    pid = tl.program_id(0)
    b = pid // S
    s = pid % S
    hw = h * w
    n = _image_of(batch_index, s_bi, b, N, HAS_BI)
    x1, y1, x2, y2 = _load_box(boxes, sb0, sb1, b)
    plane0 = img + n * sN
    gbase = grad + b.to(tl.int64) * C * hw
    sx1 = tl.zeros([BLOCK], dtype=tl.float64)
    sx2 = tl.zeros([BLOCK], dtype=tl.float64)
    sy1 = tl.zeros([BLOCK], dtype=tl.float64)
    sy2 = tl.zeros([BLOCK], dtype=tl.float64)
    for start in range(s * BLOCK, hw, S * BLOCK):
        p = start + tl.arange(0, BLOCK)
        mask = p < hw
        i = p // w
        j = p % w
        iy0, iy1, iy2, iy3, wy0, wy1, wy2, wy3, dy0, dy1, dy2, dy3 = _taps(
            _position(y1, y2, i.to(tl.float64), h, ALIGN), H, MODE, ZEROS)
        ix0, ix1, ix2, ix3, wx0, wx1, wx2, wx3, dx0, dx1, dx2, dx3 = _taps(
            _position(x1, x2, j.to(tl.float64), w, ALIGN), W, MODE, ZEROS)
        ox0, ox1, ox2, ox3 = _offsets4(ix0, ix1, ix2, ix3, sW)
        gx = tl.zeros([BLOCK], dtype=tl.float64)
        gy = tl.zeros([BLOCK], dtype=tl.float64)
        for c in range(C):
            g = tl.load(gbase + c * hw + p, mask=mask, other=0).to(tl.float64)
            g = g * tl.load(affine + c)
            plane = plane0 + c * sC
            r, dr = _row2(plane + iy0.to(tl.int64) * sH, ox0, ox1, ox2, ox3, wx0, wx1, wx2, wx3,
                          dx0, dx1, dx2, dx3, mask, NT)
            dvx = wy0 * dr
            dvy = dy0 * r
            if NT > 1:
                r, dr = _row2(plane + iy1.to(tl.int64) * sH, ox0, ox1, ox2, ox3, wx0, wx1, wx2,
                              wx3, dx0, dx1, dx2, dx3, mask, NT)
                dvx += wy1 * dr
                dvy += dy1 * r
            if NT > 2:
                r, dr = _row2(plane + iy2.to(tl.int64) * sH, ox0, ox1, ox2, ox3, wx0, wx1, wx2,
                              wx3, dx0, dx1, dx2, dx3, mask, NT)
                dvx += wy2 * dr
                dvy += dy2 * r
                r, dr = _row2(plane + iy3.to(tl.int64) * sH, ox0, ox1, ox2, ox3, wx0, wx1, wx2,
                              wx3, dx0, dx1, dx2, dx3, mask, NT)
                dvx += wy3 * dr
                dvy += dy3 * r
            gx += g * dvx
            gy += g * dvy
        fx = _position_dhi(j.to(tl.float64), w, ALIGN)
        fy = _position_dhi(i.to(tl.float64), h, ALIGN)
        gx = tl.where(mask, gx, 0.0)
        gy = tl.where(mask, gy, 0.0)
        sx1 += gx * (1.0 - fx)
        sx2 += gx * fx
        sy1 += gy * (1.0 - fy)
        sy2 += gy * fy
    base = partial + (b.to(tl.int64) * S + s) * 4
    tl.store(base + 0, tl.sum(sx1, axis=0))
    tl.store(base + 1, tl.sum(sy1, axis=0))
    tl.store(base + 2, tl.sum(sx2, axis=0))
    tl.store(base + 3, tl.sum(sy2, axis=0))


# ----------------------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------------------


def _pow2(n: int, lo: int, hi: int) -> int:
    """The power of two >= n, clipped to [lo, hi]."""
    return max(lo, min(hi, triton.next_power_of_2(max(1, n))))


def _block_for(n: int, cap: int = 1024) -> int:
    return _pow2(n, 32, cap)


# Output pixels per program and warps of the pixel kernels (forward, atomic backward), per mode
# and accumulation type (float64?): the largest tiles that compile without spilling on sm_90
# (bench/gpu_report.py prints the registers of each). Bicubic holds 16 taps per pixel, so it
# gets fewer pixels per thread than nearest.
_PIXEL_TILES = {
    ("nearest", False): (1024, 4), ("nearest", True): (512, 4),
    ("bilinear", False): (512, 4), ("bilinear", True): (256, 4),
    ("bicubic", False): (256, 4), ("bicubic", True): (128, 4),
}


def _pixel_tile(mode: str, acc64: bool, pixels: int) -> Tuple[int, int]:
    block, warps = _PIXEL_TILES[(mode, acc64)]
    return min(block, _block_for(pixels)), warps


# The affine table [scale(C), shift(C)] of each normalisation, on each device: built the first
# time a normalisation is used (filled on the device, value by value: a copy from the host
# would stall the host until the GPU is done), then reused, so that a call makes no
# host-to-device copy (a host sync, and not capturable in a CUDA graph). Never evicted: a table
# may still be read by a kernel in flight; past _AFFINE_CACHE_LIMIT entries calls build their own.
_AFFINE_TABLES: Dict[tuple, torch.Tensor] = {}
_AFFINE_CACHE_LIMIT = 1024


def _affine(channels: int, uint8_input: bool, mean, std, like: torch.Tensor) -> torch.Tensor:
    """[scale(C), shift(C)] float64 on like's device: out = v * scale + shift (v / 255 first
    for uint8)."""
    fake = is_fake(like)  # traced by torch.compile: a constant of the graph, not cached
    key = (like.device, channels, uint8_input, None if mean is None else tuple(mean),
           None if std is None else tuple(std))
    table = None if fake else _AFFINE_TABLES.get(key)
    if table is None:
        value_scale = 1.0 / 255.0 if uint8_input else 1.0
        scale, shift = [], []
        for c in range(channels):
            m = 0.0 if mean is None else float(mean[0 if len(mean) == 1 else c])
            s = 1.0 if std is None else float(std[0 if len(std) == 1 else c])
            scale.append(value_scale / s)
            shift.append(-m / s)
        if like.device.type == "cpu" or fake:  # no device to wait for
            table = torch.tensor(scale + shift, dtype=torch.float64, device=like.device)
        else:
            table = torch.empty(2 * channels, dtype=torch.float64, device=like.device)
            for i, value in enumerate(scale + shift):
                table[i] = value  # a fill launched on the device's stream
        if not fake and len(_AFFINE_TABLES) < _AFFINE_CACHE_LIMIT:
            _AFFINE_TABLES[key] = table
    return table


def _acc64(*dtypes) -> bool:
    """Accumulate in float64 when any of the dtypes is float64 (else float32). Passed to the
    kernels as a bool constexpr (plain values keep torch.compile's kernel codegen simple)."""
    return torch.float64 in dtypes


# pixel indices are int32 in the kernels, with room for a tile: the ops' own output limit
_INT32_LIMIT = contract.MAX_OUTPUT_ELEMENTS_PER_BOX


def _check_sizes(h: int, w: int, programs: int, image: Tuple[int, ...]) -> None:
    """The kernels index pixels in int32 and offsets inside one image (channel c's plane,
    c * stride) too: outputs and images beyond that are refused. image: (C, H, W, sC, sH, sW),
    C >= 1 (callers return early for empty outputs), so C * h * w bounds h * w too."""
    C, H, W, sC, sH, sW = image
    contract.check_output_size(C, h, w)
    if programs >= 2**31:
        raise ValueError(f"crop_resize: {programs} programs of outputs of {C} x {h} x {w} are too "
                         "many for one Triton launch (fewer boxes per call)")
    if (C - 1) * sC + (H - 1) * sH + (W - 1) * sW >= _INT32_LIMIT:
        raise ValueError(f"crop_resize: an image of {C} x {H} x {W} with strides "
                         f"({sC}, {sH}, {sW}) is too large for the Triton kernels (offsets "
                         f"inside one image must stay below {_INT32_LIMIT})")


def _check_images_exist(N: int, boxes: int) -> None:
    """Boxes need an image to read (the C++ ops raise the same): with N = 0 every batch_index
    value is out of range, and clamping it into [0, N) is impossible."""
    if N == 0 and boxes > 0:
        raise IndexError("crop_resize: batch_index values must lie in [0, N) with N = 0 images")


def _index_args(batch_index: Optional[torch.Tensor], boxes: torch.Tensor):
    """(pointer, stride, present) of batch_index; boxes stand in for an absent one (unread)."""
    if batch_index is None:
        return boxes, 0, False
    return batch_index, batch_index.stride(0), True


def _forward_impl(images: torch.Tensor, boxes: torch.Tensor, batch_index: Optional[torch.Tensor],
                  size: List[int], mode: str, align_corners: bool, padding_mode: str,
                  mean: Optional[List[float]], std: Optional[List[float]],
                  out_dtype: torch.dtype) -> torch.Tensor:
    h, w = int(size[0]), int(size[1])
    N, C, H, W = images.shape
    B = boxes.shape[0]
    contract.check_output_size(C, h, w)
    contract.check_per_channel_values("mean", mean, nonzero=False)
    contract.check_per_channel_values("std", std, nonzero=True)
    if boxes.device.type == "cpu" and not is_fake(boxes):  # the interpreter: values cost no sync
        contract.check_finite_boxes("crop_resize", boxes)
        if batch_index is not None and N > 0:  # N = 0: _check_images_exist says so below
            check_index_values(batch_index, N, "crop_resize", "batch_index")
    if B * C * h * w == 0:
        return torch.empty((B, C, h, w), dtype=out_dtype, device=images.device)
    _check_images_exist(N, B)
    code = _MODES[mode]
    acc64 = _acc64(images.dtype, out_dtype)
    block, warps = _pixel_tile(mode, acc64, h * w)
    grid = (B * triton.cdiv(h * w, block),)
    _check_sizes(h, w, grid[0], (C, H, W, *images.stride()[1:]))
    out = torch.empty((B, C, h, w), dtype=out_dtype, device=images.device)
    bi, s_bi, has_bi = _index_args(batch_index, boxes)
    with on_device(images):
        affine = _affine(C, images.dtype == torch.uint8, mean, std, images)
        launch(_forward_kernel)[grid](
            images, boxes, boxes.stride(0), boxes.stride(1), bi, s_bi, out, affine, N, C, H, W,
            *images.stride(), h, w, HAS_BI=has_bi, MODE=code, NT=_TAPS[code],
            ZEROS=padding_mode == "zeros", ALIGN=bool(align_corners), ACC64=acc64, BLOCK=block,
            num_warps=warps)
    return out


def _backward_images_impl(grad: torch.Tensor, boxes: torch.Tensor,
                          batch_index: Optional[torch.Tensor], image_size: List[int],
                          image_dtype: torch.dtype, mode: str, align_corners: bool,
                          padding_mode: str, std: Optional[List[float]]) -> torch.Tensor:
    N, C, H, W = (int(v) for v in image_size)
    acc_dtype = torch.float64 if image_dtype == torch.float64 else torch.float32
    B, _, h, w = grad.shape
    device = grad.device
    if grad.numel() == 0 or N * C * H * W == 0:
        return torch.zeros((N, C, H, W), dtype=image_dtype, device=device)
    _check_images_exist(N, B)
    grad = grad.contiguous()
    code = _MODES[mode]
    nt = _TAPS[code]
    zeros = padding_mode == "zeros"
    align = bool(align_corners)
    acc = _acc64(acc_dtype)
    bi, s_bi, has_bi = _index_args(batch_index, boxes)
    sb0, sb1 = boxes.stride()
    with on_device(grad):
        affine = _affine(C, False, None, std, grad)
        if not torch.are_deterministic_algorithms_enabled():
            block, warps = _pixel_tile(mode, acc, h * w)
            grid = (B * triton.cdiv(h * w, block),)
            _check_sizes(h, w, grid[0], (C, H, W, H * W, W, 1))
            grad_images = torch.zeros((N, C, H, W), dtype=acc_dtype, device=device)
            launch(_backward_images_atomic_kernel)[grid](
                grad, boxes, sb0, sb1, bi, s_bi, grad_images, affine, N, C, H, W, h, w,
                HAS_BI=has_bi, MODE=code, NT=nt, ZEROS=zeros, ALIGN=align, ACC64=acc,
                BLOCK=block, num_warps=warps)
            return grad_images.to(image_dtype)

        # Deterministic: tap tables per (box, output index), index ranges per (box, pixel), a
        # CSR of boxes per image, then a gather with a fixed summation order.
        tables = {}
        for axis, (lo_col, hi_col, out, length) in {"y": (1, 3, h, H),
                                                    "x": (0, 2, w, W)}.items():
            index = torch.empty((B, out, 4), dtype=torch.int32, device=device)
            weight = torch.empty((B, out, 4), dtype=acc_dtype, device=device)
            span = torch.empty((B, out, 2), dtype=torch.int32, device=device)
            rng = torch.empty((B, length, 2), dtype=torch.int32, device=device)
            block = _block_for(B * out)
            launch(_axis_table_kernel)[(triton.cdiv(B * out, block),)](
                boxes, sb0, sb1, lo_col, hi_col, B * out, out, length, index, weight, span,
                MODE=code, NT=nt, ZEROS=zeros, ALIGN=align, ACC64=acc, BLOCK=block,
                num_warps=_NUM_WARPS)
            block = _block_for(length, 256)
            steps = max(1, math.ceil(math.log2(out + 1)) + 1)
            launch(_axis_range_kernel)[(B * triton.cdiv(length, block),)](
                boxes, sb0, sb1, lo_col, hi_col, B, out, length, span, rng, steps, ALIGN=align,
                BLOCK=block, num_warps=_NUM_WARPS)
            tables[axis] = (index, weight, rng)
        if has_bi:
            sorted_bi, order = torch.sort(bi, stable=True)
            # Out-of-range values count for the nearest image, as the atomic path clamps them
            # (clamping keeps the sorted order); a device assert would stop both in debug.
            sorted_bi = sorted_bi.clamp(0, N - 1)
            offsets = torch.searchsorted(sorted_bi, torch.arange(N + 1, device=device,
                                                                 dtype=sorted_bi.dtype))
        else:
            order = offsets = boxes  # unused
        grad_images = torch.empty((N, C, H, W), dtype=acc_dtype, device=device)
        by, bx_, bj = _pow2(H, 16, 32), _pow2(W, 16, 64), _pow2(w, 16, 16)
        (yindex, yweight, yrange), (xindex, xweight, xrange) = tables["y"], tables["x"]
        grid = (N * C * triton.cdiv(H, by) * triton.cdiv(W, bx_),)
        launch(_backward_images_gather_kernel)[grid](
            grad, order, offsets, grad_images, affine, C, H, W, h, w, yindex, yweight, yrange,
            xindex, xweight, xrange, HAS_BI=has_bi, ACC64=acc, BY=by, BX=bx_, BJ=bj,
            num_warps=_NUM_WARPS)
    return grad_images.to(image_dtype)


def _backward_boxes_impl(grad: torch.Tensor, images: torch.Tensor, boxes: torch.Tensor,
                         batch_index: Optional[torch.Tensor], mode: str, align_corners: bool,
                         padding_mode: str, std: Optional[List[float]]) -> torch.Tensor:
    B, C, h, w = grad.shape
    N, _, H, W = images.shape
    if grad.numel() == 0:
        return torch.zeros((B, 4), dtype=boxes.dtype, device=boxes.device)
    _check_images_exist(N, B)
    grad = grad.contiguous()
    code = _MODES[mode]
    bi, s_bi, has_bi = _index_args(batch_index, boxes)
    # Bicubic carries 16 taps and their derivatives in float64 per pixel: half the tile.
    block = _block_for(h * w, 128 if mode == "bicubic" else 256)
    S = max(1, min(triton.cdiv(h * w, block * 4), 64, max(1, 1024 // max(B, 1))))
    _check_sizes(h, w, B * S, (C, H, W, *images.stride()[1:]))
    partial = torch.empty((B, S, 4), dtype=torch.float64, device=images.device)
    with on_device(images):
        affine = _affine(C, images.dtype == torch.uint8, None, std, images)
        launch(_backward_boxes_kernel)[(B * S,)](
            grad, images, boxes, boxes.stride(0), boxes.stride(1), bi, s_bi, affine, partial, N,
            C, H, W, *images.stride(), h, w, S, HAS_BI=has_bi, MODE=code, NT=_TAPS[code],
            ZEROS=padding_mode == "zeros", ALIGN=bool(align_corners), BLOCK=block,
            num_warps=_NUM_WARPS)
    return partial.sum(dim=1).to(boxes.dtype)


# ----------------------------------------------------------------------------------------
# Registration
# ----------------------------------------------------------------------------------------

forward_op = register_op("crop_resize", _forward_impl, fake=fake_crop_resize)
backward_images_op = register_op("crop_resize_backward_images", _backward_images_impl,
                                 fake=fake_backward_images)
backward_boxes_op = register_op("crop_resize_backward_boxes", _backward_boxes_impl,
                                fake=fake_backward_boxes)
register_autograd(forward_op, backward_images_op, backward_boxes_op)
