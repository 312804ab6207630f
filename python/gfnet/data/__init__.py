"""Data sets: a registry of builders (``register_dataset``), each giving the train / val / test
splits of (uint8 (C, H, W) image, label); ``build_datasets(cfg)`` builds the one ``data.dataset``
names. Importing this package registers every data set of the project."""

from __future__ import annotations

from pathlib import Path

import torch

from . import cluttered_digits, folders  # noqa: F401  (importing registers their data sets)
from .class_names import read_class_names
from .cluttered_digits import ClutteredDigits, split_indices
from .folders import eval_transform
from .preprocess import decode_image, eval_preprocess, to_channels
from .datasets import (DATASETS, build_datasets, class_names, eval_settings, get_dataset, list_datasets,
                       register_dataset)

__all__ = ["DATASETS", "ClutteredDigits", "build_datasets", "class_names", "eval_settings", "eval_transform",
           "get_dataset", "list_datasets", "read_class_names", "read_image", "register_dataset", "split_indices"]


def read_image(path: str | Path, channels: int, size: int | tuple[int, int], crop_fraction: float = 1.0,
               interpolation: str = "bicubic", keep_aspect: bool = True) -> torch.Tensor:
    """An image file as the (channels, H, W) uint8 model input of an evaluation at ``size``
    (S or (H, W)): decoded, converted to ``channels`` (grayscale <-> RGB), scaled to cover
    size / crop_fraction and centre-cropped (``preprocess.eval_preprocess``, the definition the
    data loaders and the predictor share); DataError naming the file if it cannot be read."""
    image = to_channels(decode_image(path), channels, f"image {str(path)!r}")
    return eval_preprocess(image, size, crop_fraction, interpolation, keep_aspect)[0].contiguous()
