"""The gfkernels ops under one backend policy, for callers that make many calls: the GFNet model
and its inference engines.

    kernels = gfkernels.Kernels(backend=None, fallback=True)   # the policy, made once
    glance = kernels.crop(96, mode="bicubic", align_corners=True, mean=m, std=s)
    patches = glance(images, boxes)                             # only the tensors are checked
    keep, num_keep = kernels.early_exit(logits, threshold, active, out_logits, exit_step, t)
    active, h = kernels.gather_rows([active, h], keep, n)

The functions gfkernels.crop_resize / early_exit / gather_rows take ``backend=`` per call and
check their arguments on every call (crop_resize looks options it has checked before up by
value). A Kernels object resolves its backend once per device (the
same choice for all three ops, so a model and its engine never disagree, and a missing default
falls back for all of them or for none), and ``crop`` checks a crop's options once: on a GPU
a call's host time is as long as the focus crop's kernel, so it bounds the engine's step rate
(bench/host_overhead.py). The ops run the same code as the functions (gfkernels/ops/*.py).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from . import backends
from .ops.crop_resize import CropOptions, Size, crop_options, run_crop_resize
from .ops.early_exit import run_early_exit
from .ops.gather_rows import run_gather_rows

OPS = ("crop_resize", "early_exit", "gather_rows")


class Kernels:
    """The ops of the backend that ``backend`` (a name of gfkernels.backends.NAMES, or None for
    the device's default) picks for each device, resolved on a device's first call.

    fallback: with backend=None, where the device's default is missing (e.g. a source tree whose
    extension was not built), use the first usable backend of gfkernels.backends.FALLBACKS, with
    one warning per process; otherwise that is an error, as a named backend that is missing
    always is. Picklable and copyable (a model holding one can be saved or deep-copied); the
    resolved ops are not carried over, a copy resolves them again.
    """

    def __init__(self, backend: Optional[str] = None, *, fallback: bool = False):
        if backend is not None and backend not in backends.TABLE:
            raise ValueError(f"backend must be one of {backends.NAMES} or None, got {backend!r}")
        self.backend = backend
        self.fallback = fallback
        self._resolved: Dict[torch.device, Tuple[backends.Backend, tuple]] = {}

    def resolve(self, device: torch.device) -> Tuple[backends.Backend, tuple]:
        """(the Backend for tensors on `device`, its ops in the order of OPS)."""
        found = self._resolved.get(device)
        if found is None:
            chosen = backends.resolve(self.backend, device, fallback=self.fallback)
            found = self._resolved[device] = (chosen, tuple(chosen.op(name) for name in OPS))
        return found

    def backend_name(self, device: torch.device) -> str:
        """The name of the backend that runs on tensors on `device`."""
        return self.resolve(torch.device(device))[0].name

    # ------------------------------------------------------------------ the ops
    def crop(self, size: Size, *, mode: str = "bilinear", align_corners: bool = False,
             padding_mode: str = "border", mean=None, std=None,
             out_dtype: Optional[torch.dtype] = None,
             memory_format: torch.memory_format = torch.contiguous_format) -> "Crop":
        """A crop_resize with these options, checked now: ``crop(images, boxes, batch_index)``."""
        return Crop(self, crop_options(size, mode, align_corners, padding_mode, mean, std,
                                       out_dtype, memory_format))

    def crop_resize(self, images: torch.Tensor, boxes: torch.Tensor, size: Size, *,
                    batch_index: Optional[torch.Tensor] = None, mode: str = "bilinear",
                    align_corners: bool = False, padding_mode: str = "border", mean=None,
                    std=None, out_dtype: Optional[torch.dtype] = None,
                    memory_format: torch.memory_format = torch.contiguous_format
                    ) -> torch.Tensor:
        """gfkernels.crop_resize with this object's backend."""
        crop = self.crop(size, mode=mode, align_corners=align_corners, padding_mode=padding_mode,
                         mean=mean, std=std, out_dtype=out_dtype, memory_format=memory_format)
        return crop(images, boxes, batch_index)

    def early_exit(self, logits: torch.Tensor, threshold, active: torch.Tensor,
                   out_logits: torch.Tensor, exit_step: torch.Tensor, step: int
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
        """gfkernels.early_exit with this object's backend."""
        return run_early_exit(self._early_exit_op, logits, threshold, active, out_logits,
                              exit_step, step)

    def gather_rows(self, tensors: Sequence[torch.Tensor], index: torch.Tensor, n
                    ) -> List[torch.Tensor]:
        """gfkernels.gather_rows with this object's backend."""
        return run_gather_rows(self._gather_rows_op, tensors, index, n)

    # (Backend, op) for tensors on `device`: the lookups the run_* functions of gfkernels/ops take
    def _crop_resize_op(self, device: torch.device):
        chosen, ops = self._resolved.get(device) or self.resolve(device)
        return chosen, ops[0]

    def _early_exit_op(self, device: torch.device):
        chosen, ops = self._resolved.get(device) or self.resolve(device)
        return chosen, ops[1]

    def _gather_rows_op(self, device: torch.device):
        chosen, ops = self._resolved.get(device) or self.resolve(device)
        return chosen, ops[2]

    # ------------------------------------------------------------------ copies and pickles
    def __getstate__(self) -> dict:
        return {"backend": self.backend, "fallback": self.fallback}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["backend"], fallback=state["fallback"])

    def __repr__(self) -> str:
        return f"Kernels(backend={self.backend!r}, fallback={self.fallback})"


class Crop:
    """crop_resize with fixed options under a Kernels policy; made by :meth:`Kernels.crop`."""

    __slots__ = ("kernels", "options")

    def __init__(self, kernels: Kernels, options: CropOptions):
        self.kernels, self.options = kernels, options

    @property
    def size(self) -> Tuple[int, int]:
        return self.options.size

    def __call__(self, images: torch.Tensor, boxes: torch.Tensor,
                 batch_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, C, h, w) crops of ``boxes`` (B, 4) from ``images`` (rows ``batch_index``, or box b
        from image b), as gfkernels.crop_resize with these options."""
        out_dtype = self.options.check(images, boxes, batch_index)
        chosen, op = self.kernels._crop_resize_op(images.device)
        return run_crop_resize(chosen, op, images, boxes, batch_index, self.options, out_dtype)

    def __repr__(self) -> str:
        return f"Crop({self.options!r}, {self.kernels!r})"


__all__ = ["Crop", "Kernels", "OPS"]
