"""The boxes GFNet crops, made on the images' device: the glance's whole-image box and the focus
boxes of the policy's actions. gfkernels.reference.focus_boxes is the definition; the function
here computes the same values (bit for bit, tests/test_boxes.py) in fewer ops, which is host
time paid at every focus step (on a GPU each op is a launch).

Neither function copies from the host: a ``torch.tensor([...], device=cuda)`` per call would
stall the host until the GPU is done. Their constants are made on the device once per (device,
sizes) and cached, outside inference mode so that autograd may save them; traced by
torch.compile, they are made in the graph instead (dynamo does not trace into the caches).
"""

from __future__ import annotations

import functools
from typing import Tuple, Union

import torch

ImageSize = Union[int, Tuple[int, int]]


def _image_hw(image_size: ImageSize) -> Tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def _make_whole_image_box(device: torch.device, h: int, w: int) -> torch.Tensor:
    """(0, 0, w, h) float32, filled on the device."""
    box = torch.zeros(4, device=device)
    box[2] = float(w)
    box[3] = float(h)
    return box


@functools.lru_cache(maxsize=64)
def _whole_image_box(device: torch.device, h: int, w: int) -> torch.Tensor:
    with torch.inference_mode(False):
        return _make_whole_image_box(device, h, w)


def whole_image_boxes(images: torch.Tensor, n: int) -> torch.Tensor:
    """(n, 4) float32 boxes (0, 0, W, H) of ``images``' size: one cached box expanded (stride 0,
    no copy), read-only; every backend reads boxes of any strides."""
    h, w = int(images.shape[-2]), int(images.shape[-1])
    if torch.compiler.is_compiling():
        return _make_whole_image_box(images.device, h, w).expand(n, 4)
    return _whole_image_box(images.device, h, w).expand(n, 4)


def _make_focus_constants(device: torch.device, h: int, w: int, patch: int):
    """(columns, scale, offset) on the device: the actions' columns in box order (col, row, col,
    row), the ranges their tops and lefts span (W - P, H - P, W - P, H - P), and (0, 0, P, P)."""
    columns = torch.arange(2, device=device).flip(0).repeat(2)
    scale = torch.empty(4, dtype=torch.float64, device=device)
    scale[0::2] = float(w - patch)
    scale[1::2] = float(h - patch)
    offset = torch.zeros(4, dtype=torch.float64, device=device)
    offset[2:] = float(patch)
    return columns, scale, offset


@functools.lru_cache(maxsize=64)
def _focus_constants(device: torch.device, h: int, w: int, patch: int):
    with torch.inference_mode(False):
        return _make_focus_constants(device, h, w, patch)


def focus_boxes(actions: torch.Tensor, image_size: ImageSize, patch_size: int) -> torch.Tensor:
    """GFNet's focus boxes, as gfkernels.reference.focus_boxes defines them: actions (B, 2) in
    [0, 1] (row, column; clamped) -> integer P x P boxes (B, 4) (x1, y1, x2, y2) with top-left
    (floor(a[:, 1] * (W - P)), floor(a[:, 0] * (H - P))), in the actions' floating dtype
    (float32 for others). Not differentiable (the boxes are integers)."""
    h, w = _image_hw(image_size)
    make = _make_focus_constants if torch.compiler.is_compiling() else _focus_constants
    columns, scale, offset = make(actions.device, h, w, int(patch_size))
    a = actions.detach().to(torch.float64).clamp(0.0, 1.0)
    # the same float64 products as the definition, floored before P is added: bit-equal
    boxes = a.index_select(1, columns).mul_(scale).floor_().add_(offset)
    return boxes.to(actions.dtype if actions.is_floating_point() else torch.float32)


def continuous_focus_boxes(actions: torch.Tensor, image_size: ImageSize, patch_size: int) -> torch.Tensor:
    """The focus boxes of :func:`focus_boxes` before the floor, differentiable in the actions:
    top-left (a[:, 1] * (W - P), a[:, 0] * (H - P)) with the actions clamped to [0, 1], and
    P x P. crop_resize's bilinear crop reads such a box between pixels and passes gradients
    back to its corners, so a loss on the patches reaches the actions (and whatever made
    them): the differentiable policy training. In the actions' floating dtype (float32 for
    others)."""
    h, w = _image_hw(image_size)
    a = actions if actions.is_floating_point() else actions.float()
    a = a.clamp(0.0, 1.0)
    top_left = torch.stack((a[:, 1] * float(w - patch_size), a[:, 0] * float(h - patch_size)), dim=1)
    return torch.cat((top_left, top_left + float(patch_size)), dim=1)


__all__ = ["continuous_focus_boxes", "focus_boxes", "whole_image_boxes"]
