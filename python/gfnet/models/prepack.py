"""Convolutions whose weights are reordered for oneDNN once, for CPU inference.

oneDNN computes a CPU convolution with its weight in a blocked layout of its own, and aten's
convolution reorders the weight into it on every call. For a network with many weights per
activation that reorder is a large part of the time: ResNet-50 at 96 px runs its five steps
1.15x faster in float32 and 1.28x in bf16 with the reorders done once, with the very same
results (bench/RESULTS.md, "Weights packed once"). It does not pay everywhere: MobileNetV3
ran 0.86-0.90x and digitnet 0.94x in float32, so a backbone asks for it
(``Backbone.cpu_prepack``, measured per family).

:class:`PackedConv2d` is an ``nn.Conv2d`` (same parameters, state dict, FLOP count) that keeps
its packed weight per dtype, made on its first CPU inference call in that dtype, and remade
when its weight changes; it runs as a plain convolution wherever the packed one does not
apply (gradients, tracing, compiling, other devices or dtypes, other padding modes).
:class:`PackedBottleneck` runs a folded ResNet bottleneck on them with its ReLUs and its
shortcut's sum fused into the convolutions.

:class:`PackedLinear` does the same for a large float32 ``nn.Linear`` anywhere in the model
(at least ``LARGE_LINEAR`` weights): oneDNN's inner product on a weight converted once ran
1.3-2x faster than aten's linear at 1-256 rows (Linear(18432, 2048), the ImageNet presets'
policy layer, whose 151 MB of weights are read at every focus step); it differs from aten's by
summation order only (1e-6 relative). Linears under autocast stay aten's.
:class:`PackedGRUCell` runs a large GRU cell's two products the same way (the recurrent
classifier's and the policy's, 2048 -> 1024 in those presets).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

from .backbones import Backbone
from .folding import fold_batch_norms

if TYPE_CHECKING:
    from ..precision import InferenceFormat


def prepack_available() -> bool:
    """Whether this torch has oneDNN's packed-weight convolution and inner product."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def _inference_on_cpu(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a call on ``x`` is CPU inference that a packed weight may run (no gradients, no
    tracing or compiling, which must see aten's ops)."""
    return (x.device.type == "cpu" and weight.device.type == "cpu" and not torch.is_grad_enabled()
            and not torch.jit.is_tracing() and not torch.jit.is_scripting()
            and not torch.compiler.is_compiling())


class _Packed:
    """What the packed modules share: taking over a plain module's parameters and state, and
    packs kept per key, remade when a weight they were made from changes (in place or
    replaced), neither copied nor pickled (oneDNN's opaque tensors: remade on use)."""

    _packs: dict
    _packed_from: tuple[str, ...] = ()  # the parameters a pack is made from

    @classmethod
    def adopt(cls, module: nn.Module):
        """``module`` as this class, its parameters shared, not copied."""
        packed = cls.__new__(cls)
        packed.__dict__.update({k: dict(v) if type(v) is dict else v for k, v in module.__dict__.items()})
        packed._packs = {}
        return packed

    def __getstate__(self):
        state = dict(super().__getstate__())  # a copy: the default state is the live __dict__
        state["_packs"] = {}
        return state

    def _pack(self, key, make):
        """The pack under ``key``, made by ``make()`` unless one from the current weights is kept
        (threads packing at once each make the same pack; the last one stays)."""
        made_from = tuple(None if t is None else (t._version, t.data_ptr())
                          for t in (getattr(self, name) for name in self._packed_from))
        entry = self._packs.get(key)
        if entry is None or entry[0] != made_from:
            entry = (made_from, make())
            self._packs[key] = entry
        return entry[1]


class PackedConv2d(_Packed, nn.Conv2d):
    """An ``nn.Conv2d`` that runs CPU inference on a weight packed once (module docstring)."""

    _packed_from = ("weight", "bias")

    def _pack_dtype(self, x: torch.Tensor) -> torch.dtype | None:
        """The dtype the packed weight runs ``x`` in, or None where it does not apply."""
        if (not _inference_on_cpu(x, self.weight) or x.dim() != 4 or self.padding_mode != "zeros"
                or isinstance(self.padding, str)):
            return None
        if torch.is_autocast_enabled("cpu"):
            dtype = torch.get_autocast_dtype("cpu")
            return dtype if dtype in (torch.float32, torch.bfloat16) else None
        return x.dtype if x.dtype == self.weight.dtype and x.dtype in (torch.float32, torch.bfloat16) else None

    def _make(self, dtype: torch.dtype, input_size: list[int]):
        weight = self.weight.detach().to(dtype).contiguous().to_mkldnn()
        packed = torch._C._nn.mkldnn_reorder_conv2d_weight(weight, list(self.padding), list(self.stride),
                                                           list(self.dilation), self.groups, input_size)
        return packed, None if self.bias is None else self.bias.detach().to(dtype)

    def run_packed(self, x: torch.Tensor, *, activation: str = "none",
                   add: torch.Tensor | None = None) -> torch.Tensor | None:
        """activation(conv(x) + add) on the packed weight, in one oneDNN call (``activation``:
        "none" or "relu"; ``add``: a tensor of the output's shape, or None); None where the packed
        path does not apply, and the caller runs its plain ops."""
        dtype = self._pack_dtype(x)
        if dtype is None:
            return None
        weight, bias = self._pack(dtype, lambda: self._make(dtype, list(x.shape)))
        args = (weight, bias, list(self.padding), list(self.stride), list(self.dilation), self.groups)
        if add is None:
            return torch.ops.mkldnn._convolution_pointwise(x.to(dtype), *args, activation, [], "")
        return torch.ops.mkldnn._convolution_pointwise.binary(x.to(dtype), add.to(dtype), *args, "add", 1.0,
                                                              activation, [], "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.run_packed(x)
        return super().forward(x) if out is None else out


LARGE_LINEAR = 1 << 20  # weights of a Linear worth packing (4 MB in float32)


def _float32_inference(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a product of ``x`` and ``weight`` is float32 CPU inference outside autocast on
    rows (2-d), which oneDNN's inner product runs for :class:`PackedLinear` and
    :class:`PackedGRUCell`."""
    return (_inference_on_cpu(x, weight) and not torch.is_autocast_enabled("cpu") and x.dim() == 2
            and x.dtype == torch.float32 and weight.dtype == torch.float32)


def _inner_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T + bias on oneDNN, ``weight`` converted for it (``to_mkldnn``)."""
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, None if bias is None else bias.detach(),
                                              "none", [], "")


class PackedLinear(_Packed, nn.Linear):
    """An ``nn.Linear`` that runs float32 CPU inference through oneDNN's inner product on a
    weight converted once (module docstring); aten's linear everywhere else."""

    _packed_from = ("weight",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _float32_inference(x, self.weight):
            return super().forward(x)
        weight = self._pack(torch.float32, lambda: self.weight.detach().contiguous().to_mkldnn())
        return _inner_product(x, weight, self.bias)


class PackedGRUCell(_Packed, nn.GRUCell):
    """An ``nn.GRUCell`` whose two matrix products run as :class:`PackedLinear`'s do (float32
    CPU inference on oneDNN's inner product, weights converted once), with PyTorch's GRU cell
    around them: r = sigmoid(W_ir x + b_ir + W_hr h + b_hr), z likewise, n = tanh(W_in x + b_in +
    r * (W_hn h + b_hn)), h' = (1 - z) * n + z * h. aten's cell everywhere else."""

    _packed_from = ("weight_ih", "weight_hh")

    def forward(self, x: torch.Tensor, hx: torch.Tensor | None = None) -> torch.Tensor:
        if hx is None or hx.dtype != torch.float32 or not _float32_inference(x, self.weight_ih):
            return super().forward(x, hx)
        w_ih, w_hh = self._pack(torch.float32, lambda: (self.weight_ih.detach().contiguous().to_mkldnn(),
                                                        self.weight_hh.detach().contiguous().to_mkldnn()))
        i_r, i_z, i_n = _inner_product(x, w_ih, self.bias_ih).chunk(3, 1)
        h_r, h_z, h_n = _inner_product(hx, w_hh, self.bias_hh).chunk(3, 1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return n + z * (hx - n)


class PackedBottleneck(_Packed, Bottleneck):
    """torchvision's ResNet bottleneck with its batch norms folded and its convolutions packed,
    run as three oneDNN calls: conv1 + ReLU, conv2 + ReLU, and conv3 + the shortcut + ReLU
    (the sums and the ReLU fused into the convolutions instead of three passes over the
    activations of their own). Elsewhere (:meth:`PackedConv2d.run_packed` returns None) it runs
    the block as torchvision does."""

    @staticmethod
    def fusable(block: nn.Module) -> bool:
        """Whether ``block`` is a bottleneck whose batch norms are folded and convolutions packed."""
        return (type(block) is Bottleneck and isinstance(block.relu, nn.ReLU)
                and all(type(getattr(block, f"bn{i}")) is nn.Identity for i in (1, 2, 3))
                and all(isinstance(getattr(block, f"conv{i}"), PackedConv2d) for i in (1, 2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1.run_packed(x, activation="relu")
        if out is None:
            return super().forward(x)
        out = self.conv2.run_packed(out, activation="relu")
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.conv3.run_packed(out, activation="relu", add=shortcut)


def prepack_weights(module: nn.Module) -> int:
    """Packs, in place, the convolutions of every Backbone in ``module`` that asks for it
    (``cpu_prepack``: :class:`PackedConv2d`, and its folded ResNet bottlenecks as
    :class:`PackedBottleneck`) and every Linear, or GRU cell's input weight, of at least
    ``LARGE_LINEAR`` weights (:class:`PackedLinear`, :class:`PackedGRUCell`); returns how many
    modules it packed. For models kept for inference (a pack follows its weight if that still
    changes)."""
    if not prepack_available():
        return 0
    count = 0
    backbones = [m for m in module.modules() if isinstance(m, Backbone) and getattr(m, "cpu_prepack", False)]
    for backbone in backbones:
        for parent in list(backbone.modules()):
            for name, child in list(parent._modules.items()):
                if type(child) is nn.Conv2d:
                    parent._modules[name] = PackedConv2d.adopt(child)
                    count += 1
        for parent in list(backbone.modules()):
            for name, child in list(parent._modules.items()):
                if PackedBottleneck.fusable(child):
                    parent._modules[name] = PackedBottleneck.adopt(child)
    for parent in list(module.modules()):
        for name, child in list(parent._modules.items()):
            if type(child) is nn.Linear and child.weight.numel() >= LARGE_LINEAR:
                parent._modules[name] = PackedLinear.adopt(child)
                count += 1
            elif type(child) is nn.GRUCell and child.weight_ih.numel() >= LARGE_LINEAR:
                parent._modules[name] = PackedGRUCell.adopt(child)
                count += 1
    return count


def networks_for_inference(module: nn.Module, fmt: InferenceFormat) -> nn.Module:
    """``module``'s networks in ``fmt``'s memory layout and, with ``fmt.fold_batch_norm`` (a
    model kept for inference), their batch norms folded (gfnet.models.folding) and their weights
    packed where that pays (:func:`prepack_weights`); in place. What GFNet.set_inference_format
    and the report's static baseline both do."""
    if fmt.fold_batch_norm:
        if module.training:
            raise ValueError("batch norm can only be folded into a model in eval mode")
        fold_batch_norms(module)
    module.to(memory_format=fmt.memory_format)
    if fmt.fold_batch_norm:
        prepack_weights(module)
    return module


__all__ = ["LARGE_LINEAR", "PackedBottleneck", "PackedConv2d", "PackedGRUCell", "PackedLinear",
           "networks_for_inference", "prepack_available", "prepack_weights"]
