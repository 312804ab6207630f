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

This module is the host side (launch shapes, checks, the normalisation table, the three ops and
their registration), and the module path the ops are imported by. The kernels are in one
module per algorithm, as the CUDA kernels are in one header per algorithm
(csrc/cuda/crop_resize/): crop_resize_forward.py, crop_resize_backward_images.py (atomics and
the deterministic gather), crop_resize_backward_boxes.py, and the device code they share in
crop_resize_common.py.
"""

import math
from typing import Dict, List, Optional, Tuple

import torch
import triton
from torch._subclasses.fake_tensor import is_fake

from .. import contract
from ..ops.common import check_index_values
from ..ops.crop_resize import (fake_backward_boxes, fake_backward_images, fake_crop_resize,
                               register_autograd)
from . import launch, on_device, register_op
from .crop_resize_backward_boxes import _backward_boxes_kernel
from .crop_resize_backward_images import (_axis_range_kernel, _axis_table_kernel,
                                          _backward_images_atomic_kernel,
                                          _backward_images_gather_kernel)
from .crop_resize_forward import _forward_kernel

_MODES = {"nearest": 0, "bilinear": 1, "bicubic": 2}
_TAPS = {0: 1, 1: 2, 2: 4}
_NUM_WARPS = 4


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
                  out_dtype: torch.dtype, channels_last: bool = False) -> torch.Tensor:
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
    layout = contract.crop_output_format(channels_last)
    if B * C * h * w == 0:
        return torch.empty((B, C, h, w), dtype=out_dtype, device=images.device,
                           memory_format=layout)
    _check_images_exist(N, B)
    code = _MODES[mode]
    acc64 = _acc64(images.dtype, out_dtype)
    block, warps = _pixel_tile(mode, acc64, h * w)
    grid = (B * triton.cdiv(h * w, block),)
    _check_sizes(h, w, grid[0], (C, H, W, *images.stride()[1:]))
    out = torch.empty((B, C, h, w), dtype=out_dtype, device=images.device, memory_format=layout)
    bi, s_bi, has_bi = _index_args(batch_index, boxes)
    with on_device(images):
        affine = _affine(C, images.dtype == torch.uint8, mean, std, images)
        launch(_forward_kernel)[grid](
            images, boxes, boxes.stride(0), boxes.stride(1), bi, s_bi, out, affine, N, C, H, W,
            *images.stride(), h, w, HAS_BI=has_bi, MODE=code, NT=_TAPS[code],
            CHANNELS_LAST=bool(channels_last),
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
