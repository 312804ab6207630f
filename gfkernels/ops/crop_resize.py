"""crop_resize: its public API, metadata checks, fake kernels and autograd.

Three ops make it up in every compiled backend: crop_resize (the forward) and its backward
wrt images and wrt boxes, with the schemas of csrc/ops/crop_resize.cpp. The autograd glue
below wires any backend's forward to that backend's two backward ops. docs/OPS.md states the
semantics; gfkernels/reference.py defines them.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch

from .. import backends, contract, reference
from .common import call, check_index_values, register_compiled

IMAGE_DTYPES = (torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64)
OUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# The output layouts the kernels write: (B, C, h, w) contiguous, or channels innermost.
MEMORY_FORMATS = (torch.contiguous_format, torch.channels_last)

Size = Union[int, Sequence[int]]


def normalise_size(size: Size) -> Tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if not isinstance(size, (list, tuple, torch.Size)) or len(size) != 2 or \
            not all(isinstance(s, int) and not isinstance(s, bool) for s in size):
        raise ValueError(f"crop_resize: size must be an int or (h, w) ints, got {size!r}")
    size = tuple(size)
    if size[0] <= 0 or size[1] <= 0:
        raise ValueError(f"crop_resize: size must be positive, got {size}")
    return size


def per_channel_list(values, name: str) -> Optional[list]:
    """mean/std given as a sequence, a CPU tensor or one number -> a list of floats (or None).
    The values are needed on the host: a GPU tensor would be read with a hidden sync, so it is
    refused."""
    if values is None:
        return None
    if isinstance(values, torch.Tensor):
        if values.device.type != "cpu":
            raise ValueError(f"crop_resize: {name} must be numbers or a CPU tensor, got a tensor "
                             f"on {values.device} (reading it would synchronise with the "
                             f"device; pass .tolist() once)")
        values = values.detach().reshape(-1).tolist()
    elif isinstance(values, (int, float)):
        values = [values]
    return [float(v) for v in values]


def check_tensor_args(images, boxes, batch_index) -> None:
    """The tensors' metadata (no values read): checked on every call."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"crop_resize: images must be 4-D (N, C, H, W), got shape {shape}")
    if images.dtype not in IMAGE_DTYPES:
        raise TypeError(f"crop_resize: images must be uint8, float16, bfloat16, float32 or "
                        f"float64, got {images.dtype}")
    if images.shape[2] == 0 or images.shape[3] == 0:
        raise ValueError(f"crop_resize: images must have H > 0 and W > 0, got "
                         f"{tuple(images.shape)}")
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        shape = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
        raise ValueError(f"crop_resize: boxes must be (B, 4) as (x1, y1, x2, y2), got {shape}")
    if boxes.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"crop_resize: boxes must be float32 or float64, got {boxes.dtype}")
    if boxes.device != images.device:
        raise ValueError(f"crop_resize: boxes must be on the images' device {images.device}, "
                         f"got {boxes.device}")
    if batch_index is not None:
        if not isinstance(batch_index, torch.Tensor) or batch_index.dtype != torch.int64:
            raise TypeError("crop_resize: batch_index must be an int64 tensor, got "
                            f"{getattr(batch_index, 'dtype', type(batch_index).__name__)}")
        if batch_index.dim() != 1 or batch_index.shape[0] != boxes.shape[0]:
            raise ValueError(f"crop_resize: batch_index must be (B,) with B = {boxes.shape[0]} "
                             f"boxes, got shape {tuple(batch_index.shape)}")
        if batch_index.device != images.device:
            raise ValueError(f"crop_resize: batch_index must be on the images' device "
                             f"{images.device}, got {batch_index.device}")
    elif boxes.shape[0] != images.shape[0]:
        raise ValueError("crop_resize: without batch_index, boxes must hold one box per image "
                         f"(B == N), got B = {boxes.shape[0]} and N = {images.shape[0]}")


def check_memory_format(memory_format) -> None:
    if not isinstance(memory_format, torch.memory_format) or memory_format not in MEMORY_FORMATS:
        raise ValueError("crop_resize: memory_format must be torch.contiguous_format or "
                         f"torch.channels_last, got {memory_format!r}")


def check_option_args(mode, align_corners, padding_mode, mean, std, out_dtype) -> None:
    """The options that do not depend on the images (out_dtype None: derived from them)."""
    if mode not in reference.MODES:
        raise ValueError(f"crop_resize: mode must be one of {reference.MODES}, got {mode!r}")
    if padding_mode not in reference.PADDING_MODES:
        raise ValueError(f"crop_resize: padding_mode must be one of {reference.PADDING_MODES}, "
                         f"got {padding_mode!r}")
    if mode == "nearest" and align_corners:
        raise ValueError("crop_resize: align_corners=True is not defined for mode='nearest' "
                         "(as in F.interpolate)")
    contract.check_per_channel_values("mean", mean, nonzero=False)
    contract.check_per_channel_values("std", std, nonzero=True)
    if out_dtype is not None and out_dtype not in OUT_DTYPES:
        raise TypeError(f"crop_resize: out_dtype must be float16, bfloat16, float32 or float64, "
                        f"got {out_dtype}")


def check_channel_args(channels: int, mean, std, size=None) -> None:
    """The options that depend on the images' channel count C."""
    for name, values in (("mean", mean), ("std", std)):
        if values is not None and len(values) not in (1, channels):
            raise ValueError(f"crop_resize: {name} must hold 1 or C = {channels} values (one "
                             f"per channel), got {len(values)}")
    if size is not None:
        contract.check_output_size(channels, size[0], size[1])


def check_args(images, boxes, batch_index, mode, align_corners, padding_mode, mean, std,
               out_dtype, size=None) -> None:
    """Metadata checks shared by every backend, and by the fake kernels (no tensor values are
    read, so this runs under torch.compile and on meta tensors); the backends check values
    (gfkernels/contract.py). size: (h, w), checked against the output limit when given."""
    check_tensor_args(images, boxes, batch_index)
    if out_dtype is None:
        raise TypeError("crop_resize: out_dtype must be float16, bfloat16, float32 or float64, "
                        "got None")
    check_option_args(mode, align_corners, padding_mode, mean, std, out_dtype)
    check_channel_args(images.shape[1], mean, std, size)


def default_out_dtype(images: torch.Tensor) -> torch.dtype:
    """out_dtype=None: the images' dtype if floating, else float32."""
    return images.dtype if images.is_floating_point() else torch.float32


class CropOptions:
    """crop_resize's arguments other than the tensors, normalised and checked once.

    A caller that crops many times with the same options (the GFNet model: one glance and one
    focus crop per step) holds one of these, so each call checks only the tensors; the checks of
    the options were about half of gfkernels.crop_resize's host time.
    """

    __slots__ = ("size", "size_list", "mode", "align_corners", "padding_mode", "mean", "std",
                 "out_dtype", "channels_last", "_channels_checked")

    def __init__(self, size: Size, *, mode: str = "bilinear", align_corners: bool = False,
                 padding_mode: str = "border", mean=None, std=None,
                 out_dtype: Optional[torch.dtype] = None,
                 memory_format: torch.memory_format = torch.contiguous_format):
        self.size = normalise_size(size)
        self.size_list = list(self.size)
        self.mean, self.std = per_channel_list(mean, "mean"), per_channel_list(std, "std")
        check_option_args(mode, align_corners, padding_mode, self.mean, self.std, out_dtype)
        check_memory_format(memory_format)
        self.mode, self.align_corners, self.padding_mode = mode, align_corners, padding_mode
        self.out_dtype = out_dtype
        # the op's argument: a bool (torch.save cannot pickle a torch.memory_format)
        self.channels_last = memory_format == torch.channels_last
        self._channels_checked: set = set()  # channel counts that passed check_channel_args

    def check(self, images, boxes, batch_index) -> torch.dtype:
        """The per-call checks; returns the output dtype."""
        check_tensor_args(images, boxes, batch_index)
        channels = images.shape[1]
        if channels not in self._channels_checked:
            check_channel_args(channels, self.mean, self.std, self.size)
            self._channels_checked.add(channels)
        return self.out_dtype if self.out_dtype is not None else default_out_dtype(images)

    @property
    def memory_format(self) -> torch.memory_format:
        return contract.crop_output_format(self.channels_last)

    def __repr__(self) -> str:
        return (f"CropOptions(size={self.size}, mode={self.mode!r}, align_corners="
                f"{self.align_corners}, padding_mode={self.padding_mode!r}, mean={self.mean}, "
                f"std={self.std}, out_dtype={self.out_dtype}, "
                f"memory_format={self.memory_format})")


_OPTIONS: dict = {}  # recent calls' options, checked: _options_key(...) -> CropOptions
_MAX_OPTIONS = 256


def _numbers(values) -> bool:
    return all(type(v) in (int, float) for v in values)


def _options_key(size, mode, align_corners, padding_mode, mean, std, out_dtype, memory_format):
    """A hashable key of exactly these arguments, or None where one cannot be cached (a tensor
    of mean/std, whose values could change under the same object, or an argument of an
    unexpected type: those go through the checks, which refuse them). Types are part of the
    key: size=4.0 must not find the options of size=4."""
    if type(size) is int:
        size_key = size
    elif isinstance(size, (list, tuple)) and all(type(v) is int for v in size):
        size_key = tuple(size)
    else:
        return None
    parts = []
    for values in (mean, std):
        if values is None or type(values) in (int, float):
            parts.append((type(values), values))
        elif isinstance(values, (list, tuple)) and _numbers(values):
            parts.append(tuple(values))
        else:
            return None
    if type(mode) is not str or type(padding_mode) is not str or type(align_corners) is not bool:
        return None
    if out_dtype is not None and not isinstance(out_dtype, torch.dtype):
        return None
    if not isinstance(memory_format, torch.memory_format):
        return None
    return (size_key, mode, align_corners, padding_mode, *parts, out_dtype, memory_format)


def crop_options(size, mode, align_corners, padding_mode, mean, std, out_dtype,
                 memory_format=torch.contiguous_format) -> CropOptions:
    """CropOptions of these arguments, checked once per distinct value: gfkernels.crop_resize
    called in a loop with the same options checks them on its first call only (they were most
    of its host time)."""
    key = _options_key(size, mode, align_corners, padding_mode, mean, std, out_dtype,
                       memory_format)
    options = _OPTIONS.get(key) if key is not None else None
    if options is None:
        options = CropOptions(size, mode=mode, align_corners=align_corners,
                              padding_mode=padding_mode, mean=mean, std=std, out_dtype=out_dtype,
                              memory_format=memory_format)
        if key is not None:
            if len(_OPTIONS) >= _MAX_OPTIONS:
                _OPTIONS.clear()
            _OPTIONS[key] = options
    return options


def run_crop_resize(chosen: backends.Backend, op, images, boxes, batch_index,
                    options: CropOptions, out_dtype: torch.dtype) -> torch.Tensor:
    """The op of the backend `chosen` on tensors that passed options.check (which gave
    out_dtype): the value checks the backend does not do itself, then the call."""
    if batch_index is not None and not chosen.checks_index_values:
        check_index_values(batch_index, images.shape[0], "crop_resize", "batch_index")
    needs_grad = torch.is_grad_enabled() and (images.requires_grad or boxes.requires_grad)
    return call(chosen, op, needs_grad, images, boxes, batch_index, options.size_list,
                options.mode, options.align_corners, options.padding_mode, options.mean,
                options.std, out_dtype, options.channels_last)


def crop_resize(
    images: torch.Tensor,
    boxes: torch.Tensor,
    size: Size,
    *,
    batch_index: Optional[torch.Tensor] = None,
    mode: str = "bilinear",
    align_corners: bool = False,
    padding_mode: str = "border",
    mean=None,
    std=None,
    out_dtype: Optional[torch.dtype] = None,
    memory_format: torch.memory_format = torch.contiguous_format,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Crops box b of image ``batch_index[b]`` and resizes it to ``size`` in one pass.

    images (N, C, H, W) uint8/float16/bfloat16/float32/float64, any strides; boxes (B, 4)
    float (x1, y1, x2, y2) in pixels, may be fractional and leave the image; batch_index (B,)
    int64 or None (box b reads image b). mode "bilinear" | "bicubic" | "nearest";
    padding_mode "border" | "zeros"; mean/std per channel, fused: out = (v - mean) / std with
    v divided by 255 first for uint8. Returns a (B, C, h, w) tensor of out_dtype (default
    images.dtype if floating, else float32) in memory_format (torch.contiguous_format, or
    torch.channels_last: written in that layout, no reorder), differentiable wrt images
    (floating) and boxes (bilinear, bicubic) on every backend. backend: a name of
    gfkernels.backends.NAMES, or None for the device's default (cpp on CPU, cuda on GPU).
    docs/OPS.md gives the exact sampling positions. Many calls with the same options:
    gfkernels.Kernels(...).crop(size, ...) checks the options once.
    """
    options = crop_options(size, mode, align_corners, padding_mode, mean, std, out_dtype,
                           memory_format)
    out_dtype = options.check(images, boxes, batch_index)
    chosen, op = backends.lookup("crop_resize", backend, images.device)
    return run_crop_resize(chosen, op, images, boxes, batch_index, options, out_dtype)


# ----------------------------------------------------------------------------------------
# Fake kernels (output shapes, for torch.compile and opcheck) of the three ops
# ----------------------------------------------------------------------------------------


def fake_crop_resize(images, boxes, batch_index, size, mode, align_corners, padding_mode, mean,
                     std, out_dtype, channels_last=False):
    # the checks too: on meta tensors mixed with real ones this runs instead of a kernel
    concrete = all(isinstance(s, int) for s in size)  # not symbolic sizes under torch.compile
    check_args(images, boxes, batch_index, mode, align_corners, padding_mode, mean, std,
               out_dtype, tuple(size) if concrete else None)
    return torch.empty((boxes.shape[0], images.shape[1], size[0], size[1]), dtype=out_dtype,
                       device=images.device, memory_format=contract.crop_output_format(channels_last))


def fake_backward_images(grad, boxes, batch_index, image_size, image_dtype, mode,
                         align_corners, padding_mode, std):
    return grad.new_empty(image_size, dtype=image_dtype)


def fake_backward_boxes(grad, images, boxes, batch_index, mode, align_corners, padding_mode,
                        std):
    return torch.empty_like(boxes, memory_format=torch.contiguous_format)


# ----------------------------------------------------------------------------------------
# Autograd: the forward op of a backend, differentiated by that backend's backward ops
# ----------------------------------------------------------------------------------------


def _setup_context(ctx, inputs, output) -> None:
    # (the memory format, inputs[10], is the output's: the backward ops read any layout)
    images, boxes, batch_index, _size, mode, align_corners, padding_mode, _mean, std = inputs[:9]
    ctx.save_for_backward(images, boxes, batch_index)
    ctx.options = (mode, align_corners, padding_mode, std)


def register_autograd(forward, backward_images, backward_boxes) -> None:
    """Makes `forward` (an op name or CustomOpDef with crop_resize's schema) differentiable
    wrt images and boxes through the ops `backward_images` and `backward_boxes` (mean and
    the sampling options are constants)."""

    def backward(ctx, grad: torch.Tensor):
        images, boxes, batch_index = ctx.saved_tensors
        mode, align_corners, padding_mode, std = ctx.options
        grad_images = grad_boxes = None
        if ctx.needs_input_grad[0]:
            grad_images = backward_images(grad, boxes, batch_index, list(images.shape),
                                          images.dtype, mode, align_corners, padding_mode, std)
        if ctx.needs_input_grad[1]:
            grad_boxes = backward_boxes(grad, images, boxes, batch_index, mode, align_corners,
                                        padding_mode, std)
        return grad_images, grad_boxes, None, None, None, None, None, None, None, None, None

    torch.library.register_autograd(forward, backward, setup_context=_setup_context)


def _register_compiled() -> None:
    fakes = {"crop_resize": fake_crop_resize,
             "crop_resize_backward_images": fake_backward_images,
             "crop_resize_backward_boxes": fake_backward_boxes}
    if all([register_compiled(name, fake) for name, fake in fakes.items()]):
        ops = torch.ops.gfkernels
        register_autograd("gfkernels::crop_resize", ops.crop_resize_backward_images,
                          ops.crop_resize_backward_boxes)


_register_compiled()
