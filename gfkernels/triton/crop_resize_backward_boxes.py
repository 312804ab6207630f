"""crop_resize's backward wrt boxes, launched by crop_resize.py: each program sums, in
float64, the contributions of a slice of one box's pixels into partial sums of
(dx1, dy1, dx2, dy2); the host adds the partials in a fixed order (deterministic, no atomics).
"""

import triton
import triton.language as tl

from .crop_resize_common import (_image_of, _load_box, _offsets4, _position, _position_dhi,
                                 _taps)


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
