"""Data sets: a registry of builders (``register_dataset``), each giving the train / val / test
splits of (uint8 (C, H, W) image, label); ``build_datasets(cfg)`` builds the one ``data.dataset``
names. Importing this package registers every data set of the project."""

from __future__ import annotations

import torch

from ..errors import DataError
from . import cluttered_digits, folders  # noqa: F401  (importing registers their data sets)
from .cluttered_digits import ClutteredDigits, split_indices
from .registry import DATASETS, build_datasets, get_dataset, list_datasets, register_dataset

__all__ = ["DATASETS", "ClutteredDigits", "build_datasets", "get_dataset", "list_datasets", "read_image",
           "register_dataset", "split_indices"]


def read_image(path: str, channels: int, size: int) -> torch.Tensor:
    """An image file as a (C, H, W) uint8 tensor of size x size: scaled so its shorter side is
    ``size`` (bicubic), then centre-cropped; DataError naming the file if it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            im.load()
    except FileNotFoundError:
        raise DataError(f"image {path!r} does not exist") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"cannot read image {path!r} ({type(e).__name__}: {e})") from None
    if im.size != (size, size):
        w, h = im.size
        s = size / min(w, h)
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
    import numpy as np

    a = np.asarray(im, dtype=np.uint8)
    t = torch.from_numpy(a.copy())
    return t[None] if t.dim() == 2 else t.permute(2, 0, 1).contiguous()
