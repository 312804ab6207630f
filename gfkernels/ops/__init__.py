"""The gfkernels ops, one module each: its public API, metadata checks, fake kernels and
autograd. Every backend (gfkernels.backends) implements each op's schema."""

from .crop_resize import crop_resize
from .early_exit import early_exit, gather_rows

__all__ = ["crop_resize", "early_exit", "gather_rows"]
