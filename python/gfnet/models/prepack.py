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
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

from .backbones import Backbone


def prepack_available() -> bool:
    """Whether this torch has oneDNN's packed-weight convolution."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


class PackedConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` that runs CPU inference on a weight packed once (module docstring)."""

    _packs: dict

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> PackedConv2d:
        """The same convolution (its parameters shared, not copied) as a PackedConv2d."""
        packed = cls.__new__(cls)
        packed.__dict__.update({k: dict(v) if type(v) is dict else v for k, v in conv.__dict__.items()})
        packed._packs = {}
        return packed

    def __getstate__(self):
        # the packs are oneDNN's opaque tensors: neither copied nor pickled, remade on use
        state = dict(super().__getstate__())  # a copy: the default state is the live __dict__
        state["_packs"] = {}
        return state

    def _pack_dtype(self, x: torch.Tensor) -> torch.dtype | None:
        """The dtype the packed weight runs ``x`` in, or None where it does not apply."""
        if (x.device.type != "cpu" or x.dim() != 4 or self.padding_mode != "zeros"
                or isinstance(self.padding, str) or torch.is_grad_enabled()
                or torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()
                or self.weight.device.type != "cpu"):
            return None
        if torch.is_autocast_enabled("cpu"):
            dtype = torch.get_autocast_dtype("cpu")
            return dtype if dtype in (torch.float32, torch.bfloat16) else None
        return x.dtype if x.dtype == self.weight.dtype and x.dtype in (torch.float32, torch.bfloat16) else None

    def _pack(self, dtype: torch.dtype, input_size: list[int]):
        weight = self.weight.detach().to(dtype).contiguous().to_mkldnn()
        packed = torch._C._nn.mkldnn_reorder_conv2d_weight(weight, list(self.padding), list(self.stride),
                                                           list(self.dilation), self.groups, input_size)
        bias = None if self.bias is None else self.bias.detach().to(dtype)
        return packed, bias

    def _versions(self) -> tuple:
        return (self.weight._version, self.weight.data_ptr(),
                None if self.bias is None else (self.bias._version, self.bias.data_ptr()))

    def run_packed(self, x: torch.Tensor, *, activation: str = "none",
                   add: torch.Tensor | None = None) -> torch.Tensor | None:
        """activation(conv(x) + add) on the packed weight, in one oneDNN call (``activation``:
        "none" or "relu"; ``add``: a tensor of the output's shape, or None); None where the packed
        path does not apply, and the caller runs its plain ops."""
        dtype = self._pack_dtype(x)
        if dtype is None:
            return None
        entry = self._packs.get(dtype)
        if entry is None or entry[0] != self._versions():
            # several threads may pack at once: each makes the same pack, the last one stays
            entry = (self._versions(), *self._pack(dtype, list(x.shape)))
            self._packs[dtype] = entry
        _, weight, bias = entry
        args = (weight, bias, list(self.padding), list(self.stride), list(self.dilation), self.groups)
        if add is None:
            return torch.ops.mkldnn._convolution_pointwise(x.to(dtype), *args, activation, [], "")
        return torch.ops.mkldnn._convolution_pointwise.binary(x.to(dtype), add.to(dtype), *args, "add", 1.0,
                                                              activation, [], "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.run_packed(x)
        return super().forward(x) if out is None else out


class PackedBottleneck(Bottleneck):
    """torchvision's ResNet bottleneck with its batch norms folded and its convolutions packed,
    run as three oneDNN calls: conv1 + ReLU, conv2 + ReLU, and conv3 + the shortcut + ReLU
    (the sums and the ReLU fused into the convolutions instead of three passes over the
    activations of their own). Elsewhere (:meth:`PackedConv2d.run_packed` returns None) it runs
    the block as torchvision does."""

    @classmethod
    def from_block(cls, block: Bottleneck) -> PackedBottleneck:
        packed = cls.__new__(cls)
        packed.__dict__.update({k: dict(v) if type(v) is dict else v for k, v in block.__dict__.items()})
        return packed

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


def prepack_convolutions(module: nn.Module) -> int:
    """Turns the convolutions of every Backbone in ``module`` that asks for it
    (``cpu_prepack``) into :class:`PackedConv2d`, in place; returns how many. For models kept for
    inference (their weights may still change: a pack follows its weight)."""
    if not prepack_available():
        return 0
    count = 0
    backbones = [m for m in module.modules() if isinstance(m, Backbone) and getattr(m, "cpu_prepack", False)]
    for backbone in backbones:
        for parent in list(backbone.modules()):
            for name, child in list(parent._modules.items()):
                if type(child) is nn.Conv2d:
                    parent._modules[name] = PackedConv2d.from_conv(child)
                    count += 1
        for parent in list(backbone.modules()):
            for name, child in list(parent._modules.items()):
                if PackedBottleneck.fusable(child):
                    parent._modules[name] = PackedBottleneck.from_block(child)
    return count


__all__ = ["PackedBottleneck", "PackedConv2d", "prepack_available", "prepack_convolutions"]
