"""Device code that every crop_resize Triton kernel shares: the sampling maths of
csrc/sampling.h restated (source positions and Keys' cubic weights computed in float64 with the
same expressions, so that taps agree bit for bit with the compiled kernels; the exact-copy
test), and how a program finds its box, its image and its output pixels. Nothing is read out
of bounds whatever the values: positions are clamped to [-4, size + 4] (NaN -> -4) and
batch_index values to [0, N) after a device assert (active in Triton's debug mode).
"""

import triton
import triton.language as tl


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
        a = -0.75  # Keys' cubic constant, as in csrc/sampling.h (and F.interpolate)
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
def _is_exact(lo, hi, out, size):
    return (lo == tl.floor(lo)) & (hi - lo == out) & (lo >= 0.0) & (hi <= size)


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
