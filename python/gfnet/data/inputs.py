"""Images of any kind, as a trained model takes them: what a caller may hand a predictor.

File paths (``str`` / ``Path``, any format PIL reads), PIL images, numpy arrays ((H, W)
grayscale or (H, W, C) with C = 1 or 3, or a (N, H, W, C) batch), torch tensors ((H, W),
(C, H, W) or a (N, C, H, W) batch), uint8 or floating point in [0, 1], one image or a list
mixing kinds and sizes: ``flatten_images`` names each image ("images[3]", a path) and
``prepare_image`` makes it the model's input (channels converted, then the evaluation resize of
gfnet.data.preprocess), with clear errors naming the image. The predictor and ``gfnet
predict``'s decoding workers share these definitions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError
from .preprocess import EvalGeometry, decode_image, eval_preprocess, pil_to_tensor, to_channels


@dataclass
class PreparedImage:
    """An image as the model takes it, and where it came from."""

    input: str
    image: torch.Tensor  # (C, H, W) uint8, or float32 in [0, 1]
    geometry: EvalGeometry


def prepare_image(name: str, item: Any, channels: int, model_cfg: Any, settings: tuple,
                  resize: bool) -> PreparedImage:
    """One image of any kind as the model takes it: its channels converted, then the evaluation
    resize (``settings``: the model's ``eval_settings``), or, with ``resize=False``, its own size
    (refused under the focus patch size). The one definition the predictor and ``gfnet
    predict``'s decoding workers share."""
    x = to_channels(_as_tensor(name, item), channels, name)
    if resize:
        x, geo = eval_preprocess(x, model_cfg.image_size, *settings)
        return PreparedImage(name, x, geo)
    h, w = x.shape[-2:]
    if min(h, w) < model_cfg.patch_size:
        raise DataError(f"{name} is {h} x {w} pixels, smaller than the model's {model_cfg.patch_size} x "
                        f"{model_cfg.patch_size} focus patch: give a larger image or leave resize=True")
    return PreparedImage(name, x, EvalGeometry((h, w), (h, w), 0, 0, (h, w)))


# ---------------------------------------------------------------------- inputs
def _is_pil(x: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - PIL comes with torchvision
        return False
    return isinstance(x, Image.Image)


def _is_numpy(x: Any) -> bool:
    import numpy as np

    return isinstance(x, np.ndarray)


def _describe(x: Any) -> str:
    if _is_numpy(x):
        return f"numpy array {tuple(x.shape)} {x.dtype}"
    if isinstance(x, torch.Tensor):
        return f"tensor {tuple(x.shape)} {str(x.dtype).replace('torch.', '')}"
    if _is_pil(x):
        return f"PIL image {x.width} x {x.height} {x.mode}"
    return type(x).__name__


def flatten_images(images: Any) -> list[tuple[str, Any]]:
    """(name, one image) pairs of the call's ``images``, nothing decoded yet."""
    one = _images_of("images", "image", images)
    if one is not None:
        return one
    if isinstance(images, (list, tuple)):
        out = list(_each_item(images))
        if not out:
            raise DataError("images is empty: nothing to predict")
        return out
    raise DataError(f"images is a {_describe(images)}; expected a file path, a PIL image, a numpy array, "
                    "a torch tensor or a list of them")


def _images_of(name: str, single_name: str, x: Any) -> list[tuple[str, Any]] | None:
    """(name, one image) pairs of a file path, a PIL image or an array (one image or a batch);
    None for anything else. name: what errors call ``x``; single_name: the name of one image
    that is not a file (a file is named by its path)."""
    if isinstance(x, (str, Path)):
        return [(str(x), x)]
    if _is_pil(x):
        return [(single_name, x)]
    if _is_numpy(x) or isinstance(x, torch.Tensor):
        return _split_array(name, x, single_name=single_name)
    return None


def _split_array(name: str, a: Any, single_name: str) -> list[tuple[str, Any]]:
    """One image or a batch of them (numpy (N, H, W, C), torch (N, C, H, W))."""
    layout = "(H, W), (H, W, C) or (N, H, W, C)" if _is_numpy(a) else "(H, W), (C, H, W) or (N, C, H, W)"
    if a.ndim in (2, 3):
        return [(single_name, a)]
    if a.ndim == 4:
        if a.shape[0] == 0:
            raise DataError(f"{name} ({_describe(a)}) holds no images: nothing to predict")
        return [(f"{name}[{i}]", a[i]) for i in range(a.shape[0])]
    raise DataError(f"{name} is a {a.ndim}-D {_describe(a)}; images are {layout}")


def stream_items(images: Iterable[Any]) -> Iterator[tuple[str, Any]]:
    """(name, one image) pairs of a stream's items, lazily; names as in :func:`flatten_images`."""
    one = _images_of("images", "image", images)
    if one is not None:
        yield from one
        return
    try:
        iterator = iter(images)
    except TypeError:
        raise DataError(f"images is a {_describe(images)}; stream takes an iterable of images") from None
    yield from _each_item(iterator)


def _each_item(items: Iterable[Any]) -> Iterator[tuple[str, Any]]:
    """(name, one image) pairs of a sequence's or a stream's items, ``images[i]`` by place."""
    for i, item in enumerate(items):
        name = f"images[{i}]"
        one = _images_of(name, name, item)
        if one is None:
            raise DataError(f"{name} is a {_describe(item)}; expected a file path, a PIL image, a numpy "
                            "array or a torch tensor")
        yield from one


def chunks(items: Iterator[tuple[str, Any]], size: int) -> Iterator[list[tuple[str, Any]]]:
    chunk: list[tuple[str, Any]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _as_tensor(name: str, item: Any) -> torch.Tensor:
    """One image of any kind -> (C, H, W) uint8, or float32 in [0, 1]; C as given (1 or 3)."""
    if isinstance(item, (str, Path)):
        return decode_image(item)
    if _is_pil(item):
        return pil_to_tensor(item)
    if _is_numpy(item):
        import numpy as np

        a = item
        if a.ndim == 3 and a.shape[2] not in (1, 3):
            raise DataError(f"{name} ({_describe(item)}) has {a.shape[2]} channels; numpy images are (H, W) or "
                            "(H, W, C) with C = 1 (grayscale) or 3 (RGB)")
        if a.dtype != np.uint8 and not np.issubdtype(a.dtype, np.floating):
            raise DataError(f"{name} ({_describe(item)}): expected uint8 or floating-point values in [0, 1]")
        if not a.flags.writeable or any(s < 0 for s in a.strides) or not a.dtype.isnative:
            a = np.array(a, dtype=a.dtype.newbyteorder("="))  # an own, native, positive-stride copy
        x = torch.from_numpy(a)
        x = x[None] if x.dim() == 2 else x.permute(2, 0, 1)
    else:
        x = item[None] if item.dim() == 2 else item
        if x.shape[0] not in (1, 3):
            raise DataError(f"{name} ({_describe(item)}) has {x.shape[0]} channels; tensor images are (H, W) or "
                            "(C, H, W) with C = 1 (grayscale) or 3 (RGB)")
        if x.dtype != torch.uint8 and not x.is_floating_point():
            raise DataError(f"{name} ({_describe(item)}): expected uint8 or floating-point values in [0, 1]")
    if x.shape[-2] < 1 or x.shape[-1] < 1:
        raise DataError(f"{name} ({_describe(item)}) has no pixels")
    if x.is_floating_point():
        x = x.float()
        lo, hi = torch.aminmax(x)
        if not (float(lo) >= 0.0 and float(hi) <= 1.0):
            raise DataError(f"{name} ({_describe(item)}): floating-point images hold values in [0, 1], this one "
                            f"spans [{float(lo):.4g}, {float(hi):.4g}] (divide 0-255 values by 255, or "
                            "pass uint8)")
    return x


def stack_images(images: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """One batch on ``device``: uint8 if every image is, else float32 in [0, 1]."""
    if any(x.is_floating_point() for x in images):
        images = [x.float() / 255.0 if x.dtype == torch.uint8 else x for x in images]
    if len({x.device for x in images}) > 1:
        images = [x.to(device) for x in images]
    return torch.stack(images).to(device, non_blocking=True)
