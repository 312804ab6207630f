"""crop_resize's backward wrt images, two ways, launched by crop_resize.py: with atomics
(every output pixel scatters its gradient into the taps it read), or, under
torch.use_deterministic_algorithms(True), as a gather with a fixed summation order: tap tables
per (box, output index), the range of output indices whose taps touch each image pixel (binary
search), then one program per image tile summing over the boxes of its image.
"""

import triton
import triton.language as tl

from .crop_resize_common import (_clamp_position, _image_of, _load_box, _output_tile,
                                 _pixel_taps, _position, _taps)


# ----------------------------------------------------------------------------------------
# Atomics: every output pixel scatters into the taps it read
# ----------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------
# Deterministic: a gather in a fixed order
# ----------------------------------------------------------------------------------------


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
