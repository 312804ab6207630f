"""The backend table: which implementations of the gfkernels ops exist, where each runs, which
one a device gets by default, and what asking for a missing one says.

Every op (gfkernels.ops.*) and the gfnet model pick their backend here, through resolve():

    backend = resolve(None, images.device)                   # the device's default, or an error
    backend = resolve(None, images.device, fallback=True)    # ... or a fallback, warned once
    backend.op("crop_resize")(images, boxes, ...)             # the op, schema arguments

Each backend exposes the ops under their schema names with the schema's positional arguments
(`ops`): the compiled backends (cpp, cuda) share torch.ops.gfkernels (the dispatcher picks the
kernel by device), Triton has torch.ops.gfkernels_triton, and the reference its pure-PyTorch
definitions. Adding a backend is one row of TABLE (and, for a device without one, a DEFAULTS
entry); see docs/OPS.md, "Adding a backend".
"""

from __future__ import annotations

import types
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

from . import contract, reference

try:  # the compiled core registers torch.ops.gfkernels.* when imported
    from . import _C

    _C_ERROR: Optional[BaseException] = None
except ImportError as error:  # a source tree without a build, or a broken install
    _C = None
    _C_ERROR = error

_REBUILD = "install with `pip install --no-build-isolation -e .`"


def _compiled_status(device_type: str) -> Tuple[bool, str]:
    if _C is None:
        return False, f"gfkernels._C is not built or failed to load ({_C_ERROR}); {_REBUILD}"
    if device_type == "cuda" and not _C.with_cuda:
        return False, ("gfkernels._C was built without CUDA kernels (rebuild with a CUDA toolkit "
                       "matching torch, or GFKERNELS_CUDA=1)")
    return True, f"compiled {device_type.upper()} kernels"


def _triton_devices() -> Tuple[str, ...]:
    from .triton import interpreting

    return ("cpu",) if interpreting() else ("cuda",)


def _triton_status() -> Tuple[bool, str]:
    from .triton import triton_status

    return triton_status()


def _compiled_ops():
    return torch.ops.gfkernels


def _triton_ops():
    from .triton import registered_ops

    return registered_ops()


def _reference_ops():
    return _REFERENCE_OPS


@dataclass(frozen=True)
class Backend:
    """One implementation of every gfkernels op."""

    name: str
    description: str
    devices_fn: Callable[[], Tuple[str, ...]]  # the device types it runs on ("*": any)
    status_fn: Callable[[], Tuple[bool, str]]  # (installed and usable, why not / what it is)
    ops_fn: Callable[[], object]
    # Its CPU kernels check index values (active, batch_index, gather index) themselves; for
    # the others the Python API checks them on CPU tensors (CUDA kernels assert on the device).
    checks_index_values: bool = False
    # Its kernels check the ops' tensor metadata themselves, with the Python API's messages and
    # exception types (the compiled backends: csrc/ops' prepare_* of every kernel entry), so
    # the API may leave the per-tensor checks to them (gather_rows does: a loop over its
    # tensors is most of its host time).
    checks_metadata: bool = False
    # Its ops are torch.library ops whose autograd is registered in Python: calls that need no
    # gradient skip that layer (gfkernels.ops.common.call).
    library_ops: bool = True

    @property
    def device_types(self) -> Tuple[str, ...]:
        return self.devices_fn()

    def runs_on(self, device: torch.device) -> bool:
        types_ = self.device_types
        return "*" in types_ or torch.device(device).type in types_

    def status(self, device: Optional[torch.device] = None) -> Tuple[bool, str]:
        """(usable, reason): whether it runs here, on `device` if given."""
        if device is not None and not self.runs_on(device):
            kinds = " or ".join(t.upper() for t in self.device_types)
            return False, (f"backend={self.name!r} runs on {kinds} tensors, got tensors on "
                           f"{torch.device(device)}")
        ok, why = self.status_fn()
        return ok, why if ok else f"backend={self.name!r} is not available: {why}"

    def available(self, device: Optional[torch.device] = None) -> bool:
        return self.status(device)[0]

    @property
    def ops(self):
        """The ops, called with the schema's positional arguments (see csrc/ops/*.cpp)."""
        return self.ops_fn()

    def op(self, name: str):
        """The op `name` of this backend, or an error saying that it has none."""
        found = getattr(self.ops, name, None)
        if found is None:
            raise NotImplementedError(f"backend={self.name!r} does not implement {name}")
        return found


def _always() -> Tuple[bool, str]:
    return True, "pure PyTorch, any device"


TABLE: Dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("cpp", "C++ kernels for CPU tensors (gfkernels._C)", lambda: ("cpu",),
                lambda: _compiled_status("cpu"), _compiled_ops, checks_index_values=True,
                checks_metadata=True),
        Backend("cuda", "CUDA kernels for GPU tensors (gfkernels._C)", lambda: ("cuda",),
                lambda: _compiled_status("cuda"), _compiled_ops, checks_metadata=True),
        Backend("triton", "Triton kernels: GPU tensors, or CPU tensors under TRITON_INTERPRET=1",
                _triton_devices, _triton_status, _triton_ops),
        Backend("reference", "gfkernels.reference: the pure-PyTorch definitions (slow)",
                lambda: ("*",), _always, _reference_ops, library_ops=False),
    )
}
NAMES = tuple(TABLE)

# The backend a device type gets by default, and what it falls back to (in order) where the
# default is missing and the caller allows a fallback.
DEFAULTS: Dict[str, str] = {"cpu": "cpp", "cuda": "cuda"}
FALLBACKS: Dict[str, Tuple[str, ...]] = {"cpu": ("reference",), "cuda": ("triton", "reference")}
_ANY_DEVICE_FALLBACKS = ("reference",)

_warned: set = set()  # (device type, fallback) pairs already warned about
# (op, backend, device) -> (Backend, op): resolve() and the op lookup cost a few microseconds,
# as much as a small kernel, so the ops remember their answers (availability does not change
# in a process; tests that pretend a build is missing replace this dict).
_resolved: Dict[tuple, tuple] = {}


def lookup(op: str, backend: Optional[str], device: torch.device) -> Tuple[Backend, Callable]:
    """(the backend resolve(backend, device) picks, its op `op`), remembered per arguments."""
    key = (op, backend, device)
    found = _resolved.get(key)
    if found is None:
        chosen = resolve(backend, device)
        found = _resolved[key] = (chosen, chosen.op(op))
    return found


def default_name(device: torch.device) -> str:
    """The name of the default backend for tensors on `device` (available or not)."""
    return DEFAULTS.get(torch.device(device).type, "reference")


def resolve(backend: Optional[str], device: torch.device, *, fallback: bool = False) -> Backend:
    """The backend to run on tensors on `device`.

    backend: a name from NAMES, or None for the device's default. A named backend that runs
    on other devices is a ValueError, one that is missing here a RuntimeError, both naming the
    reason. With backend=None and fallback=False a missing default is a RuntimeError too; with
    fallback=True the first usable backend of FALLBACKS is taken instead, with one
    RuntimeWarning per (device type, fallback) in the process.
    """
    device = torch.device(device)
    if backend is not None:
        if backend not in TABLE:
            raise ValueError(f"backend must be one of {NAMES} or None, got {backend!r}")
        chosen = TABLE[backend]
        if not chosen.runs_on(device):
            raise ValueError(chosen.status(device)[1])
        ok, why = chosen.status(device)
        if not ok:
            raise RuntimeError(why)
        return chosen
    chosen = TABLE[default_name(device)]
    ok, why = chosen.status(device)
    if ok:
        return chosen
    if not fallback:
        raise RuntimeError(f"{why} (the default for tensors on {device}; pass backend= to "
                           f"choose another of {available_names(device)})")
    for name in FALLBACKS.get(device.type, _ANY_DEVICE_FALLBACKS):
        if TABLE[name].available(device):
            if (device.type, name) not in _warned:
                _warned.add((device.type, name))
                warnings.warn(f"gfkernels: {why}; tensors on {device.type} use the {name!r} "
                              "backend instead", RuntimeWarning, stacklevel=2)
            return TABLE[name]
    raise RuntimeError(f"no gfkernels backend is available for tensors on {device}: {why}")


def available_names(device: Optional[torch.device] = None) -> Tuple[str, ...]:
    """The backends usable on `device` (None: usable here at all)."""
    return tuple(name for name, b in TABLE.items() if b.available(device))


def compiled_with_cuda() -> bool:
    return _C is not None and bool(_C.with_cuda)


# The reference's definitions behind the schema signatures of the compiled ops.
_REFERENCE_OPS = types.SimpleNamespace(
    crop_resize=lambda images, boxes, batch_index, size, mode, align_corners, padding_mode,
    mean, std, out_dtype, channels_last=False: reference.crop_resize(
        images, boxes, size, batch_index=batch_index, mode=mode, align_corners=align_corners,
        padding_mode=padding_mode, mean=mean, std=std, out_dtype=out_dtype,
        memory_format=contract.crop_output_format(channels_last)),
    early_exit=reference.early_exit,
    gather_rows=reference.gather_rows,
)
