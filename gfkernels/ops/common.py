"""Helpers every op module uses: describing bad arguments, checking index values, and
registering fake kernels and autograd for the compiled ops when the extension has them."""

from __future__ import annotations

from typing import Callable

import torch

from .. import backends


def describe(x) -> str:
    """How a bad argument is named in an error message."""
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def check_index_values(index: torch.Tensor, bound: int, op: str, name: str, *,
                       always: bool = False) -> None:
    """Range check of an index tensor's values (IndexError), for CPU tensors only (free of host
    syncs) and outside torch.compile; CUDA kernels assert on the device instead. always: on any
    real device (the reference reads values wherever they are)."""
    if index.numel() == 0 or torch.compiler.is_compiling() or index.device.type == "meta":
        return
    if index.device.type != "cpu" and not always:
        return
    lo, hi = int(index.min()), int(index.max())
    if lo < 0 or hi >= bound:
        bad = int(((index < 0) | (index >= bound)).nonzero()[0, 0])
        raise IndexError(f"{op}: {name} values must lie in [0, {bound}), got {name}[{bad}] = "
                         f"{int(index[bad])}")


def call(backend: backends.Backend, op, needs_grad: bool, *args):
    """op(*args). When no gradient is needed, a library op is called below the autograd
    layer: its Python autograd kernel (several microseconds a call, as much as a small crop)
    is skipped, as under inference_mode (which skips it already: no guard is entered there,
    the guard costs about a microsecond). Under torch.compile the call is left as it is."""
    # is_compiling first: dynamo cannot trace is_inference_mode_enabled
    if (needs_grad or not backend.library_ops or torch.compiler.is_compiling()
            or torch.is_inference_mode_enabled()):
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def compiled_op_defined(name: str) -> bool:
    """Whether the loaded gfkernels._C defines torch.ops.gfkernels.<name>."""
    if backends._C is None:
        return False
    try:
        getattr(torch.ops.gfkernels, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def register_compiled(name: str, fake: Callable) -> bool:
    """Registers `fake` as the fake kernel of gfkernels::<name> when the extension defines it;
    returns whether it did."""
    if not compiled_op_defined(name):
        return False
    torch.library.register_fake(f"gfkernels::{name}", fake)
    return True
