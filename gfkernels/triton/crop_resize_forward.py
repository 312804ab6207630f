"""crop_resize's forward kernel, launched by crop_resize.py: one program per BLOCK output
pixels of one box. An integer box of the output's size is a copy (no taps); any other box
interpolates its taps, channel by channel, with the normalisation (the affine table) fused into
the store.
"""

import triton
import triton.language as tl

from .crop_resize_common import (_image_of, _is_exact, _load_box, _offsets4, _output_tile,
                                 _pixel_taps)


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
                    CHANNELS_LAST: tl.constexpr,
                    ZEROS: tl.constexpr, ALIGN: tl.constexpr, ACC64: tl.constexpr,
                    BLOCK: tl.constexpr):
    ACC: tl.constexpr = tl.float64 if ACC64 else tl.float32
    hw = h * w
    b, p, mask, i, j = _output_tile(h, w, BLOCK)
    n = _image_of(batch_index, s_bi, b, N, HAS_BI)
    x1, y1, x2, y2 = _load_box(boxes, sb0, sb1, b)
    # c * sC and c * hw stay below 2^31 (the host checks the image's and the crop's span). A
    # box's output is C * hw elements in both layouts; channel c of pixel p is at c * hw + p
    # (contiguous) or p * C + c (channels_last).
    plane0 = img + n * sN
    if CHANNELS_LAST:
        dst = out + b.to(tl.int64) * C * hw + p * C
        oC = 1
    else:
        dst = out + b.to(tl.int64) * C * hw + p
        oC = hw
    exact = _is_exact(x1, x2, w, W) & _is_exact(y1, y2, h, H)
    if exact:
        # Fast path: an integer box of the output's size is a copy.
        off = (y1.to(tl.int64) + i) * sH + (x1.to(tl.int64) + j) * sW
        for c in range(C):
            v = tl.load(plane0 + c * sC + off, mask=mask, other=0).to(ACC)
            sc = tl.load(affine + c).to(ACC)
            sh = tl.load(affine + C + c).to(ACC)
            tl.store(dst + c * oC, _to_output(v * sc + sh, out.dtype.element_ty), mask=mask)
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
            tl.store(dst + c * oC, _to_output(v * sc + sh, out.dtype.element_ty), mask=mask)
