"""Pure-PyTorch definitions of every gfkernels op: the specification the kernels are tested
against. Written for clarity, not speed; differentiable through autograd.

docs/OPS.md states each definition in formulas. Each op first checks its arguments as the
public API and the kernels do (gfkernels/contract.py): metadata, then values, with the same
exception types, so the reference called directly is held to the same contract.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from . import contract

MODES = ("bilinear", "bicubic", "nearest")
PADDING_MODES = ("border", "zeros")
TAPS = {"nearest": 1, "bilinear": 2, "bicubic": 4}
CUBIC_A = -0.75  # Keys' constant, as PyTorch's bicubic


# ----------------------------------------------------------------------------------------
# crop_resize
# ----------------------------------------------------------------------------------------


def source_positions(lo: torch.Tensor, hi: torch.Tensor, out: int, align_corners: bool):
    """Source position of each output index along one axis: (B,) box edges -> (B, out).

    align_corners=False: lo + (j + 0.5) * (hi - lo) / out - 0.5
    align_corners=True:  lo + j * (hi - lo - 1) / (out - 1)   (out == 1: lo + (hi - lo - 1) / 2)
    """
    j = torch.arange(out, dtype=torch.float64, device=lo.device)
    extent = (hi - lo)[:, None]
    if align_corners:
        if out == 1:
            return lo[:, None] + (extent - 1.0) * 0.5
        return lo[:, None] + j * (extent - 1.0) / (out - 1)
    return lo[:, None] + (j + 0.5) * extent / out - 0.5


def cubic_weights(t: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution weights of the taps floor(x)-1 .. floor(x)+2, t = frac(x)."""
    a = CUBIC_A

    def near(d):  # |d| < 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):  # 1 <= |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return torch.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], dim=-1)


def axis_taps(x: torch.Tensor, size: int, mode: str, padding_mode: str):
    """Taps read by source positions x (any shape) along an axis of `size` pixels.

    Returns (index, weight), each of shape x.shape + (taps,). Border padding clamps each tap
    to the image; zeros padding gives taps outside the image weight 0. Indices are always
    valid. Positions are first clamped to [-4, size + 4], which changes no result (every tap
    is outside the image there either way) but keeps indices small for huge boxes.
    """
    # NaN (0 * inf from a finite box too wide for float64) reads the border, as fmax does in
    # the kernels; torch.clamp would keep the NaN
    x = torch.where(torch.isnan(x), -4.0, x).clamp(-4.0, size + 4.0)
    if mode == "nearest":
        first = torch.floor(x + 0.5)
        weight = torch.ones_like(x)[..., None]
    else:
        f = torch.floor(x)
        t = x - f  # carries the gradient wrt the position
        if mode == "bilinear":
            first = f
            weight = torch.stack([1 - t, t], dim=-1)
        else:
            first = f - 1
            weight = cubic_weights(t)
    index = first.long()[..., None] + torch.arange(TAPS[mode], device=x.device)
    if padding_mode == "zeros":
        weight = weight * ((index >= 0) & (index < size)).to(weight.dtype)
    return index.clamp(0, size - 1), weight


def crop_resize(
    images: torch.Tensor,
    boxes: torch.Tensor,
    size,
    *,
    batch_index: Optional[torch.Tensor] = None,
    mode: str = "bilinear",
    align_corners: bool = False,
    padding_mode: str = "border",
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    out_dtype: Optional[torch.dtype] = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """Crops box b of image batch_index[b] and resizes it to `size`: (B, C, h, w).

    Computed in float64, then cast to out_dtype (default: images.dtype if floating, else
    float32) in memory_format (contiguous or channels_last). uint8 values are divided by 255;
    then out = (v - mean) / std per channel.
    """
    from .ops.common import check_index_values
    from .ops.crop_resize import (check_args, check_memory_format, default_out_dtype,
                                  normalise_size, per_channel_list)

    h, w = normalise_size(size)
    mean, std = per_channel_list(mean, "mean"), per_channel_list(std, "std")
    if out_dtype is None and isinstance(images, torch.Tensor):
        out_dtype = default_out_dtype(images)
    check_args(images, boxes, batch_index, mode, align_corners, padding_mode, mean, std, out_dtype,
               (h, w))
    check_memory_format(memory_format)
    contract.check_finite_boxes("crop_resize", boxes)
    if batch_index is not None:
        check_index_values(batch_index, images.shape[0], "crop_resize", "batch_index")
    elif boxes.shape[0] and not images.shape[0]:
        raise IndexError("crop_resize: batch_index values must lie in [0, N) with N = 0 images")
    N, C, H, W = images.shape
    boxes64 = boxes.to(torch.float64)
    if batch_index is None:
        batch_index = torch.arange(N, device=images.device)

    ix, wx = axis_taps(source_positions(boxes64[:, 0], boxes64[:, 2], w, align_corners), W,
                       mode, padding_mode)  # (B, w, Kx)
    iy, wy = axis_taps(source_positions(boxes64[:, 1], boxes64[:, 3], h, align_corners), H,
                       mode, padding_mode)  # (B, h, Ky)

    values = images.to(torch.float64)
    if not images.is_floating_point():
        values = values / 255.0
    src = values[batch_index]  # (B, C, H, W)
    B = src.shape[0]
    Ky, Kx = iy.shape[-1], ix.shape[-1]
    # Vertical: the rows each output row reads, weighted.
    rows = torch.gather(src, 2, iy.reshape(B, 1, h * Ky, 1).expand(B, C, h * Ky, W))
    rows = (rows.reshape(B, C, h, Ky, W) * wy[:, None, :, :, None]).sum(dim=3)  # (B, C, h, W)
    # Horizontal: the columns each output column reads, weighted.
    cols = torch.gather(rows, 3, ix.reshape(B, 1, 1, w * Kx).expand(B, C, h, w * Kx))
    out = (cols.reshape(B, C, h, w, Kx) * wx[:, None, None, :, :]).sum(dim=4)  # (B, C, h, w)

    if mean is not None:
        out = out - _per_channel(mean, C, out)
    if std is not None:
        out = out / _per_channel(std, C, out)
    # allocated in the layout, as the kernels do (strides agree even where C, h or w is 1)
    return torch.empty(out.shape, dtype=out_dtype, device=out.device,
                       memory_format=memory_format).copy_(out)


def _per_channel(values: Sequence[float], channels: int, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(list(values), dtype=torch.float64, device=like.device)
    return t.expand(channels).reshape(1, channels, 1, 1) if t.numel() == 1 else t.reshape(
        1, channels, 1, 1)


def focus_boxes(actions: torch.Tensor, image_size, patch_size: int) -> torch.Tensor:
    """GFNet's focus boxes: top-left = floor(a * (H - P)), a[:, 0] the row, a[:, 1] the column.

    actions (B, 2) in [0, 1] -> integer P x P boxes (B, 4) as float (x1, y1, x2, y2).
    """
    H, W = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    a = actions.detach().to(torch.float64).clamp(0.0, 1.0)  # not clamp_: float64 actions are not copied
    # left = floor(a[1] * (W - P)), top = floor(a[0] * (H - P)); right, bottom = + P (exact).
    # No out= into column views: torch.compile (torch 2.11) refuses a non-contiguous out=.
    top_left = torch.stack((a[:, 1] * (W - patch_size), a[:, 0] * (H - patch_size)), dim=1).floor_()
    boxes = torch.cat((top_left, top_left + patch_size), dim=1)
    return boxes.to(actions.dtype if actions.is_floating_point() else torch.float32)


def per_sample_crop(images: torch.Tensor, actions: torch.Tensor, patch_size: int) -> torch.Tensor:
    """The official GFNet patch extraction: a Python loop slicing one patch per sample (a host
    sync per sample). Kept as the baseline the kernels are measured and checked against."""
    H, W = images.shape[-2:]
    patches = []
    for b in range(images.shape[0]):
        top = int(math.floor(float(actions[b, 0]) * (H - patch_size)))
        left = int(math.floor(float(actions[b, 1]) * (W - patch_size)))
        patches.append(images[b, :, top:top + patch_size, left:left + patch_size])
    return torch.stack(patches)


# ----------------------------------------------------------------------------------------
# early exit
# ----------------------------------------------------------------------------------------


def exit_confidence(logits: torch.Tensor) -> torch.Tensor:
    """Confidence of each row of logits (n, K): its max softmax probability, 1 / sum_j
    exp(x_j - max_j x_j), computed in float32 (float64 for float64 logits). A row holding a NaN
    (or +inf, or only -inf: softmax is undefined there) gets NaN, which is never confident."""
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    x = logits.to(acc)
    m = x.max(dim=1, keepdim=True).values  # torch.max propagates NaN
    return 1.0 / torch.exp(x - m).sum(dim=1)


def exit_mask(logits: torch.Tensor, threshold) -> torch.Tensor:
    """(n,) bool: the rows that exit at `threshold` (a float or a 0-dim tensor): confidence >=
    threshold, compared in the confidence's dtype; a threshold of -inf lets every row exit,
    NaN rows included (the last step). Reads no tensor value on the host."""
    conf = exit_confidence(logits)
    thr = torch.as_tensor(threshold, dtype=torch.float64).to(device=conf.device, dtype=conf.dtype)
    return (conf >= thr) | torch.isneginf(thr)


def early_exit(logits: torch.Tensor, threshold, active: torch.Tensor, out_logits: torch.Tensor,
               exit_step: torch.Tensor, step: int):
    """One early-exit decision over the n still-active rows.

    logits (n, K) of the active samples, active (n,) int64 their rows in the full batch of B;
    out_logits (B, K) and exit_step (B,) int64 receive, in place, the logits and `step` of the
    rows that exit now. Returns (keep, num_keep): keep (n,) int64 is a stable partition of
    range(n), the surviving positions in order first (valid up to num_keep), then the exiting
    ones in order; num_keep is a 0-dim int64 tensor on the logits' device.
    """
    from .ops.common import check_index_values
    from .ops.early_exit import check_early_exit_args, threshold_tensor

    threshold = threshold_tensor(threshold)
    check_early_exit_args(logits, threshold, active, out_logits, exit_step, step)
    contract.check_threshold_value(threshold)
    check_index_values(active, out_logits.shape[0], "early_exit", "active", always=True)
    contract.check_distinct("early_exit", "active", active)
    exits = exit_mask(logits, threshold)
    rows = active[exits]
    out_logits[rows] = logits[exits].to(out_logits.dtype)
    exit_step[rows] = step
    positions = torch.arange(logits.shape[0], device=logits.device)
    keep = torch.cat([positions[~exits], positions[exits]])
    num_keep = (~exits).sum()
    return keep, num_keep


def gather_rows(tensors: Sequence[torch.Tensor], index: torch.Tensor, n: int):
    """[t[index[:n]] for t in tensors]: each a new contiguous tensor (n, *t.shape[1:])."""
    from .ops.common import check_index_values
    from .ops.gather_rows import check_gather_rows_args

    tensors = check_gather_rows_args(tensors, index, n)
    if tensors:
        check_index_values(index[:n], tensors[0].shape[0], "gather_rows", "index", always=True)
    rows = index[:n]
    return [t[rows].contiguous() for t in tensors]
