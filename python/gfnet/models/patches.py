"""Glance and focus patches, both through gfkernels' crop_resize (one batched call each).

- glance: the whole image box (0, 0, W, H) resized to P x P;
- focus: the integer P x P box whose top-left is ``floor(a * (H - P))`` (row from a[0],
  column from a[1]), an exact copy of those pixels; in the differentiable policy training the
  same box before the floor, read bilinearly between pixels, so that gradients reach ``a``.

Normalisation (``(v / 255 - mean) / std`` for uint8 input) is fused into the same pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

if TYPE_CHECKING:
    import gfkernels


def model_kernels(backend: str | None = None) -> "gfkernels.Kernels":
    """The kernel policy of a GFNet model: the given gfkernels backend for every op (crop_resize,
    early_exit, gather_rows), else the device's default from gfkernels' backend table, falling
    back (with one warning) where that default is not built, e.g. a source tree whose extension
    was not compiled: the model and its engines then run on the reference."""
    import gfkernels

    return gfkernels.Kernels(backend or None, fallback=True)


def whole_image_boxes(images: torch.Tensor, n: int) -> torch.Tensor:
    """(n, 4) glance boxes (0, 0, W, H) of ``images``: gfkernels.whole_image_boxes."""
    import gfkernels

    return gfkernels.whole_image_boxes(images, n)


def focus_boxes(actions: torch.Tensor, image_hw: tuple[int, int], patch: int) -> torch.Tensor:
    """(B, 2) actions in [0, 1] (row, col) -> (B, 4) float32 integer-valued boxes
    (x1, y1, x2, y2) at top-left floor(a * (H - P)): gfkernels.focus_boxes, whose definition
    the reference per-sample crop shares."""
    import gfkernels

    return gfkernels.focus_boxes(actions.detach().float(), tuple(image_hw), patch)


def continuous_focus_boxes(actions: torch.Tensor, image_hw: tuple[int, int], patch: int) -> torch.Tensor:
    """(B, 2) actions -> (B, 4) boxes at top-left a * (H - P), unfloored and differentiable in
    the actions: gfkernels.continuous_focus_boxes (the differentiable policy training)."""
    import gfkernels

    return gfkernels.continuous_focus_boxes(actions, tuple(image_hw), patch)


class Patches:
    """A model's two crops with their options fixed (and checked) once, under its kernel policy:
    per call only the tensors are checked (gfkernels.Kernels.crop)."""

    def __init__(self, kernels: "gfkernels.Kernels", patch: int, *, glance_mode: str = "bicubic",
                 glance_align_corners: bool = True, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None,
                 out_dtype: torch.dtype | None = torch.float32):
        self.patch = patch
        def crops(memory_format: torch.memory_format) -> tuple:
            common = dict(padding_mode="border", mean=mean, std=std, out_dtype=out_dtype,
                          memory_format=memory_format)
            return (kernels.crop(patch, mode=glance_mode, align_corners=glance_align_corners,
                                 **common),
                    kernels.crop(patch, mode="bilinear", align_corners=False, **common))

        # (glance, focus) per layout, keyed by channels_last: the kernels write the patches
        # straight into the layout the encoders take
        self._crops = {False: crops(torch.contiguous_format), True: crops(torch.channels_last)}
        # the layout the encoders take their input in (GFNet.set_inference_format, the trainer's
        # run.train_layout): a channels_last model reads its patches 10 % faster already in
        # channels_last than reordering them itself (mobilenet_v3_large and resnet50 at 96 px
        # on a CPU). A bool, not a torch.memory_format: torch.save cannot pickle those.
        self.channels_last = False

    def glance(self, images: torch.Tensor, boxes: torch.Tensor,
               batch_index: torch.Tensor | None = None) -> torch.Tensor:
        """The whole images (``boxes``: their whole_image_boxes) resized to P x P."""
        return self._crops[self.channels_last][0](images, boxes, batch_index)

    def focus(self, images: torch.Tensor, boxes: torch.Tensor,
              batch_index: torch.Tensor | None = None) -> torch.Tensor:
        """The P x P patches of ``boxes``: exact copies of the pixels for focus_boxes, bilinear
        reads between them for continuous_focus_boxes (differentiable in the boxes)."""
        return self._crops[self.channels_last][1](images, boxes.to(images.device), batch_index)


def glance_patches(images: torch.Tensor, patch: int, *, batch_index: torch.Tensor | None = None,
                   mode: str = "bicubic", align_corners: bool = True,
                   mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                   out_dtype: torch.dtype | None = torch.float32, backend: str | None = None
                   ) -> torch.Tensor:
    """One glance crop as a model makes it (a model keeps its Patches instead)."""
    n = images.shape[0] if batch_index is None else batch_index.shape[0]
    patches = Patches(model_kernels(backend), patch, glance_mode=mode,
                      glance_align_corners=align_corners, mean=mean, std=std, out_dtype=out_dtype)
    return patches.glance(images, whole_image_boxes(images, n), batch_index)


def focus_patches(images: torch.Tensor, actions: torch.Tensor, patch: int, *,
                  batch_index: torch.Tensor | None = None,
                  mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                  out_dtype: torch.dtype | None = torch.float32, backend: str | None = None
                  ) -> torch.Tensor:
    """One focus crop at ``actions`` as a model makes it (a model keeps its Patches instead)."""
    patches = Patches(model_kernels(backend), patch, mean=mean, std=std, out_dtype=out_dtype)
    return patches.focus(images, focus_boxes(actions, tuple(images.shape[-2:]), patch),
                         batch_index)
