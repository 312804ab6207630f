"""Glance and focus patches, both through ``gfkernels.crop_resize`` (one batched call each).

- glance: the whole image box (0, 0, W, H) resized to P x P;
- focus: the integer P x P box whose top-left is ``floor(a * (H - P))`` (row from a[0],
  column from a[1]), an exact copy of those pixels.

Normalisation (``(v / 255 - mean) / std`` for uint8 input) is fused into the same pass.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch


def _crop_resize():
    import gfkernels

    return gfkernels.crop_resize


def _backend(backend: str | None, device: torch.device) -> str:
    """The gfkernels backend the model's patches use: the given one, else the device's default
    from gfkernels' backend table, falling back (with one warning) where that default is not
    built, e.g. a source tree whose extension was not compiled (remembered by the table)."""
    from gfkernels import backends

    return backends.resolve_remembered(backend or None, device, fallback=True).name


def _make_whole_image_box(device: torch.device, h: int, w: int) -> torch.Tensor:
    """(0, 0, w, h) float32 on ``device``, filled on the device: ``torch.tensor([...],
    device=cuda)`` would copy from the host and stall it until the GPU is done."""
    box = torch.zeros(4, device=device)
    box[2] = float(w)
    box[3] = float(h)
    return box


@functools.lru_cache(maxsize=64)
def _whole_image_box(device: torch.device, h: int, w: int) -> torch.Tensor:
    """The box of _make_whole_image_box, made once per (device, h, w) (three launches, then
    none), outside inference mode so that autograd may save it."""
    with torch.inference_mode(False):
        return _make_whole_image_box(device, h, w)


def whole_image_boxes(images: torch.Tensor, n: int) -> torch.Tensor:
    """(n, 4) boxes (0, 0, W, H): one cached box expanded (stride 0, no copy), read-only; every
    backend reads boxes of any strides. Traced by torch.compile, a box of the graph's own."""
    h, w = int(images.shape[-2]), int(images.shape[-1])
    if torch.compiler.is_compiling():
        return _make_whole_image_box(images.device, h, w).expand(n, 4)
    return _whole_image_box(images.device, h, w).expand(n, 4)


def focus_boxes(actions: torch.Tensor, image_hw: tuple[int, int], patch: int) -> torch.Tensor:
    """(B, 2) actions in [0, 1] (row, col) -> (B, 4) float32 integer-valued boxes
    (x1, y1, x2, y2) at top-left floor(a * (H - P)): gfkernels' definition, shared with the
    reference per-sample crop."""
    import gfkernels

    return gfkernels.focus_boxes(actions.detach().float(), tuple(image_hw), patch)


def glance_patches(images: torch.Tensor, patch: int, *, batch_index: torch.Tensor | None = None,
                   mode: str = "bicubic", align_corners: bool = True,
                   mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                   out_dtype: torch.dtype | None = torch.float32, backend: str | None = None
                   ) -> torch.Tensor:
    n = images.shape[0] if batch_index is None else batch_index.shape[0]
    boxes = whole_image_boxes(images, n)
    return _crop_resize()(images, boxes, patch, batch_index=batch_index, mode=mode,
                          align_corners=align_corners, padding_mode="border", mean=mean, std=std,
                          out_dtype=out_dtype, backend=_backend(backend, images.device))


def focus_patches(images: torch.Tensor, actions: torch.Tensor, patch: int, *,
                  batch_index: torch.Tensor | None = None,
                  mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                  out_dtype: torch.dtype | None = torch.float32, backend: str | None = None,
                  boxes: torch.Tensor | None = None) -> torch.Tensor:
    """The P x P patches at ``actions``; ``boxes``: their focus_boxes, when the caller has them
    already (the engine records them), so that they are computed once."""
    if boxes is None:
        boxes = focus_boxes(actions, tuple(images.shape[-2:]), patch)
    return _crop_resize()(images, boxes.to(images.device), patch, batch_index=batch_index,
                          mode="bilinear", align_corners=False, padding_mode="border",
                          mean=mean, std=std, out_dtype=out_dtype, backend=_backend(backend, images.device))
