"""Triton versions of the gfkernels ops, registered as torch.ops.gfkernels_triton.* with the
compiled ops' schemas. They run on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1
(Triton's interpreter), which is how CI tests them.

On a GPU the ops are torch.library.triton_op (torch.compile traces into the kernels, launched
through wrap_triton). Under the interpreter the kernels are Python objects that wrap_triton
cannot trace, so the same implementations are registered as opaque torch.library.custom_op
with an explicit fake kernel: opcheck then checks schema, fake kernel and autograd as on a GPU;
only torch.compile's view into the kernels is left to the GPU tests (tests/cuda).
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterable, Tuple

import torch


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_status() -> Tuple[bool, str]:
    """(usable, reason): whether the Triton kernels can run on this machine."""
    try:
        import triton  # noqa: F401
    except ImportError as error:
        return False, f"triton does not import ({error})"
    if interpreting():
        return True, "TRITON_INTERPRET=1: kernels run interpreted on CPU tensors"
    if torch.cuda.is_available():
        return True, "compiled for the CUDA GPU"
    return False, "no CUDA GPU (set TRITON_INTERPRET=1 to run on CPU tensors)"


def register_op(name: str, impl: Callable, *, mutates_args: Iterable[str] = (),
                fake: Callable) -> "torch.library.CustomOpDef":
    """Registers `impl` (its schema inferred from its annotations) as gfkernels_triton::name:
    a triton_op on GPUs, an opaque custom_op with `fake` as its fake kernel under the
    interpreter (see the module docstring)."""
    qualname = f"gfkernels_triton::{name}"
    if interpreting():
        op = torch.library.custom_op(qualname, impl, mutates_args=tuple(mutates_args))
        op.register_fake(fake)
        return op
    return torch.library.triton_op(qualname, impl, mutates_args=tuple(mutates_args))


def on_device(tensor: torch.Tensor):
    """A context in which launches run on `tensor`'s GPU and that GPU's current stream (Triton
    launches on the current device: tensors on cuda:1 with cuda:0 current would otherwise run
    on the wrong device's stream, or fault). A no-op for CPU tensors (the interpreter)."""
    if tensor.device.type == "cuda":
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


def launch(kernel):
    """kernel, ready for kernel[grid](...): through wrap_triton on a GPU, so that torch.compile
    sees the launch; as is under the interpreter."""
    return kernel if interpreting() else torch.library.wrap_triton(kernel)


def registered_ops():
    """torch.ops.gfkernels_triton, with every Triton op registered."""
    from . import crop_resize, early_exit, gather_rows  # noqa: F401  (registration on import)

    return torch.ops.gfkernels_triton
