"""torch.library glue for the compiled ops: fake kernels, autograd, argument checks and the
choice of backend. The public functions are re-exported by gfkernels/__init__.py."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch

from . import reference

try:  # the compiled core registers torch.ops.gfkernels.* when imported
    from . import _C  # noqa: F401

    _C_ERROR: Optional[BaseException] = None
except ImportError as error:  # pragma: no cover - exercised only on a broken install
    _C = None
    _C_ERROR = error

BACKENDS = ("cpp", "cuda", "triton", "reference")
_IMAGE_DTYPES = (torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64)
_OUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def compiled_ops():
    """torch.ops.gfkernels, or a clear error when the extension is not built."""
    if _C is None:
        raise RuntimeError(
            "gfkernels._C is not built or failed to load "
            f"({_C_ERROR}); install with `pip install --no-build-isolation -e .`"
        )
    return torch.ops.gfkernels


def default_backend(device: torch.device) -> str:
    return "cuda" if device.type == "cuda" else "cpp"


def _resolve_backend(backend: Optional[str], device: torch.device) -> str:
    backend = default_backend(device) if backend is None else backend
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    if backend == "cpp" and device.type != "cpu":
        raise ValueError(f"backend='cpp' runs on CPU tensors, got tensors on {device}")
    if backend == "cuda":
        if device.type != "cuda":
            raise ValueError(f"backend='cuda' runs on CUDA tensors, got tensors on {device}")
        if not compiled_ops_with_cuda():
            raise RuntimeError(
                "backend='cuda' is not available: gfkernels._C was built without CUDA kernels "
                "(rebuild with a CUDA toolkit matching torch, or GFKERNELS_CUDA=1)"
            )
    if backend == "triton":
        from .triton import triton_available

        ok, why = triton_available(device)
        if not ok:
            raise RuntimeError(f"backend='triton' is not available: {why}")
    return backend


def compiled_ops_with_cuda() -> bool:
    return _C is not None and bool(_C.with_cuda)


# ----------------------------------------------------------------------------------------
# crop_resize
# ----------------------------------------------------------------------------------------

Size = Union[int, Sequence[int]]


def _normalise_size(size: Size) -> Tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    size = tuple(size)
    if len(size) != 2 or not all(isinstance(s, int) for s in size):
        raise ValueError(f"crop_resize: size must be an int or (h, w) ints, got {size!r}")
    if size[0] <= 0 or size[1] <= 0:
        raise ValueError(f"crop_resize: size must be positive, got {size}")
    return size


def _per_channel_list(values) -> Optional[list]:
    """mean/std given as a sequence, a tensor or one number -> a list of floats (or None)."""
    if values is None:
        return None
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().reshape(-1).tolist()
    elif isinstance(values, (int, float)):
        values = [values]
    return [float(v) for v in values]


def check_crop_resize_args(images, boxes, batch_index, mode, align_corners, padding_mode,
                           mean, std, out_dtype) -> None:
    """Metadata checks shared by every backend (no tensor values are read, so this runs
    under torch.compile); the kernels check values (finite boxes, batch_index range)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"crop_resize: images must be 4-D (N, C, H, W), got shape {shape}")
    if images.dtype not in _IMAGE_DTYPES:
        raise TypeError(f"crop_resize: images must be uint8, float16, bfloat16, float32 or "
                        f"float64, got {images.dtype}")
    if images.shape[2] == 0 or images.shape[3] == 0:
        raise ValueError(f"crop_resize: images must have H > 0 and W > 0, got {tuple(images.shape)}")
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
    if mode not in reference.MODES:
        raise ValueError(f"crop_resize: mode must be one of {reference.MODES}, got {mode!r}")
    if padding_mode not in reference.PADDING_MODES:
        raise ValueError(f"crop_resize: padding_mode must be one of {reference.PADDING_MODES}, "
                         f"got {padding_mode!r}")
    if mode == "nearest" and align_corners:
        raise ValueError("crop_resize: align_corners=True is not defined for mode='nearest' "
                         "(as in F.interpolate)")
    channels = images.shape[1]
    for name, values in (("mean", mean), ("std", std)):
        if values is not None and len(values) not in (1, channels):
            raise ValueError(f"crop_resize: {name} must hold 1 or C = {channels} values (one "
                             f"per channel), got {len(values)}")
    if std is not None and any(v == 0 for v in std):
        raise ValueError("crop_resize: std must be non-zero")
    if out_dtype not in _OUT_DTYPES:
        raise TypeError(f"crop_resize: out_dtype must be float16, bfloat16, float32 or float64, "
                        f"got {out_dtype}")


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
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Crops box b of image ``batch_index[b]`` and resizes it to ``size`` in one pass.

    images (N, C, H, W) uint8/float16/bfloat16/float32/float64, any strides; boxes (B, 4)
    float (x1, y1, x2, y2) in pixels, may be fractional and leave the image; batch_index (B,)
    int64 or None (box b reads image b). mode "bilinear" | "bicubic" | "nearest";
    padding_mode "border" | "zeros"; mean/std per channel, fused: out = (v - mean) / std with
    v divided by 255 first for uint8. Returns a contiguous (B, C, h, w) tensor of out_dtype
    (default images.dtype if floating, else float32), differentiable wrt images (floating)
    and boxes (bilinear, bicubic). backend: None (cpp on CPU, cuda on GPU), "cpp", "cuda",
    "triton" or "reference". See ARCHITECTURE.md for the exact sampling positions.
    """
    size = _normalise_size(size)
    mean, std = _per_channel_list(mean), _per_channel_list(std)
    if out_dtype is None and isinstance(images, torch.Tensor):
        out_dtype = images.dtype if images.is_floating_point() else torch.float32
    check_crop_resize_args(images, boxes, batch_index, mode, align_corners, padding_mode,
                           mean, std, out_dtype)
    backend = _resolve_backend(backend, images.device)
    if backend == "reference":
        return reference.crop_resize(images, boxes, size, batch_index=batch_index, mode=mode,
                                     align_corners=align_corners, padding_mode=padding_mode,
                                     mean=mean, std=std, out_dtype=out_dtype)
    if backend == "triton":
        from .triton import crop_resize as triton_crop_resize

        return triton_crop_resize.crop_resize(images, boxes, batch_index, list(size), mode,
                                              align_corners, padding_mode, mean, std, out_dtype)
    return compiled_ops().crop_resize(images, boxes, batch_index, list(size), mode,
                                      align_corners, padding_mode, mean, std, out_dtype)


def _register_crop_resize() -> None:
    """Fake kernels (shapes for torch.compile) and autograd for the compiled ops."""

    @torch.library.register_fake("gfkernels::crop_resize")
    def _(images, boxes, batch_index, size, mode, align_corners, padding_mode, mean, std,
          out_dtype):
        return images.new_empty((boxes.shape[0], images.shape[1], size[0], size[1]),
                                dtype=out_dtype)

    @torch.library.register_fake("gfkernels::crop_resize_backward_images")
    def _(grad, boxes, batch_index, image_size, image_dtype, mode, align_corners, padding_mode,
          std):
        return grad.new_empty(image_size, dtype=image_dtype)

    @torch.library.register_fake("gfkernels::crop_resize_backward_boxes")
    def _(grad, images, boxes, batch_index, mode, align_corners, padding_mode, std):
        return torch.empty_like(boxes, memory_format=torch.contiguous_format)

    torch.library.register_autograd("gfkernels::crop_resize", crop_resize_backward,
                                    setup_context=_crop_resize_setup_context)


def _crop_resize_setup_context(ctx, inputs, output) -> None:
    images, boxes, batch_index, _size, mode, align_corners, padding_mode, _mean, std, _dt = inputs
    ctx.save_for_backward(images, boxes, batch_index)
    ctx.options = (mode, align_corners, padding_mode, std)


def crop_resize_backward(ctx, grad: torch.Tensor):
    """Gradients of the compiled crop_resize wrt images and boxes (mean/std are constants)."""
    images, boxes, batch_index = ctx.saved_tensors
    mode, align_corners, padding_mode, std = ctx.options
    ops = torch.ops.gfkernels
    grad_images = grad_boxes = None
    if ctx.needs_input_grad[0]:
        grad_images = ops.crop_resize_backward_images(
            grad, boxes, batch_index, list(images.shape), images.dtype, mode, align_corners,
            padding_mode, std)
    if ctx.needs_input_grad[1]:
        grad_boxes = ops.crop_resize_backward_boxes(
            grad, images, boxes, batch_index, mode, align_corners, padding_mode, std)
    return grad_images, grad_boxes, None, None, None, None, None, None, None, None


if _C is not None:
    _register_crop_resize()
