"""The numeric format inference runs in: the precision of the networks' arithmetic (fp32, bf16,
fp16) and the memory layout of their activations (channels_last or not).

    model.set_inference_format(InferenceFormat.choose("bf16", device))

A GFNet holds its :class:`InferenceFormat`; the engines (gfnet.inference: dynamic, streaming,
anytime) run its networks under it, so the predictor, ``gfnet eval``, ``gfnet predict`` and the
report all get it from one place. Whatever the precision, exit decisions are taken on float32
logits and every result is float32: the recurrent classifier and the policy run in float32
under autocast (GFNet._classify, GFNet.focus_step), so bf16 moves a row's logits and where it
looks only through the features the encoders hand them.

Why channels_last: oneDNN (CPU) and cuDNN (GPU) run convolutions fastest with the channels
innermost; a contiguous (N, C, H, W) model makes them reorder every activation on the way in and
out. bf16 halves the bytes every layer moves and, on CPUs with AVX-512 BF16 or AMX, doubles the
multiply rate; on CPUs without it bf16 is emulated and slower than fp32 (:func:`precision_note`).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import ContextManager

import torch

from .config.schema import LAYOUTS, PRECISIONS
from .errors import ConfigError

# each precision's autocast dtype (None: no autocast)
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = dict(zip(PRECISIONS, (None, torch.bfloat16, torch.float16)))


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX-512 BF16 or AMX tiles)."""
    cpu = torch.cpu
    checks = (getattr(cpu, "_is_avx512_bf16_supported", None), getattr(cpu, "_is_amx_tile_supported", None))
    return any(bool(check()) for check in checks if check is not None)


def has_native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` multiplies bf16 in hardware: a CPU with AVX-512 BF16 or AMX, a GPU
    that supports bf16."""
    device = torch.device(device)
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def check_precision(precision: str, device: torch.device | str, what: str = "precision") -> str:
    """``precision`` if ``device`` can run it; ConfigError naming ``what`` otherwise."""
    if precision not in PRECISIONS:
        raise ConfigError(f"{what} must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    device = torch.device(device)
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError(f"{what} 'fp16' runs on a GPU only: on the CPU choose bf16 (or fp32)")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{what} 'bf16' is not supported by {torch.cuda.get_device_name(device)}: choose fp16")
    return precision


def precision_note(precision: str, device: torch.device | str) -> str | None:
    """A warning for a precision that runs but is likely slower than fp32 here, else None."""
    if precision == "bf16" and torch.device(device).type == "cpu" and not cpu_has_native_bf16():
        return ("this CPU has no native bf16 (AVX-512 BF16 or AMX): bf16 is emulated here and likely slower "
                "than fp32; choose fp32")
    return None


@dataclass(frozen=True)
class InferenceFormat:
    """How a model's networks run at inference: ``precision`` (fp32 | bf16 | fp16: autocast to
    that dtype), ``channels_last`` (the convolutions' weights and activations in NHWC) and
    ``fold_batch_norm`` (each batch norm folded into the convolution before it,
    gfnet.models.folding, and on the CPU the weights packed for oneDNN once where that pays,
    gfnet.models.prepack: for models loaded for inference only, since it removes parameters)."""

    precision: str = "fp32"
    channels_last: bool = False
    fold_batch_norm: bool = False

    @classmethod
    def choose(cls, precision: str = "fp32", device: torch.device | str = "cpu", layout: str = "auto",
               what: str = "precision", *, fold_batch_norm: bool = False) -> InferenceFormat:
        """The format for ``device``: ``precision`` checked against it; ``layout`` "auto" picks
        channels_last (every GFNet backbone is convolutional; bench/test_bench_precision.py
        measures the gain), "channels_last" or "contiguous" force one."""
        check_precision(precision, device, what)
        if layout not in LAYOUTS:
            raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
        return cls(precision, layout != "contiguous", fold_batch_norm)

    @property
    def dtype(self) -> torch.dtype | None:
        return AUTOCAST_DTYPES[self.precision]

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self, device_type: str) -> ContextManager:
        """The context the networks run in: autocast to ``dtype``, or nothing for fp32."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type, dtype=self.dtype)

    @property
    def layout(self) -> str:
        """The layout's name: "channels_last" or "contiguous"."""
        return "channels_last" if self.channels_last else "contiguous"

    def describe(self) -> str:
        folded = ", batch norm folded" if self.fold_batch_norm else ""
        return f"{self.precision}, {self.layout}{folded}"


FP32 = InferenceFormat()

__all__ = ["AUTOCAST_DTYPES", "FP32", "LAYOUTS", "PRECISIONS", "InferenceFormat", "check_precision",
           "cpu_has_native_bf16", "has_native_bf16", "precision_note"]
