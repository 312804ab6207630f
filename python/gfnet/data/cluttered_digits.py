"""Cluttered digits: the embedded default data set (no download).

Each sample is a canvas (H x W, 128 x 128 by default; one channel, uint8) holding one
handwritten digit from scikit-learn's ``load_digits`` (8 x 8 originals, drawn at 14-18 px by
default) at a random position, among 12 fragments (8 x 8 px) cut out of other digits. The digit stays whole: no
fragment comes within 2 px of its box. ``near_clutter`` of the fragments (6 by default) sit
right beside it, 2-4 px off its box, the rest anywhere.

So the data set asks for looking. The ``digits`` preset draws its digits at 13-17 px
(``digit_size`` 15); its glance, the canvas shrunk to 48 px, draws the digit at 5-6 px, merged
with its neighbours: enough to tell where it is, not which it is. A 48 px patch at full
resolution holds the whole digit clear of the fragments. In demo runs (``gfnet demo``, seeds 0
and 1, one thread) the glance alone reads 61-75 % of the test canvases, the first focus patch
lifts that to 98.3-99.4 % where the learned policy puts it and to 67-76 % at uniformly random
locations, and the static baseline on the whole 128 px canvas reads 99.25-99.30 %.

Splits are by digit instance: each of the 1797 originals belongs to exactly one of
train / val / test (fixed by ``split_seed``), and canvases only use digits (main and clutter)
of their own split. Val and test canvases are fixed by the seed; train canvases are sampled
afresh each epoch (``set_epoch``), deterministically from (seed, epoch, index), so a resumed
or data-parallel run sees exactly the same data. ``object_box(i)`` gives the digit's box on
canvas ``i`` without drawing it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..config import Config, image_hw
from ..errors import DataError
from .datasets import register_dataset

SPLITS = ("train", "val", "test")
_SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
_CACHE: dict = {}
_CLEARANCE = 2  # px of empty canvas kept around the digit's box
_PLACEMENT_TRIES = 32  # random places tried per fragment


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    if "digits" not in _CACHE:
        from sklearn.datasets import load_digits

        d = load_digits()
        _CACHE["digits"] = (d.images.astype(np.float32) / 16.0, d.target.astype(np.int64))
    return _CACHE["digits"]


def split_indices(split: str, split_seed: int = 0) -> np.ndarray:
    """Indices (into load_digits) of the digit instances of one split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    images, _ = _load_digits()
    n = len(images)
    perm = np.random.default_rng(split_seed).permutation(n)
    n_train = int(round(_SPLIT_FRACTIONS[0] * n))
    n_val = int(round(_SPLIT_FRACTIONS[1] * n))
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n)}
    lo, hi = bounds[split]
    return np.sort(perm[lo:hi])


def _render(images: np.ndarray, sizes: range) -> dict[int, np.ndarray]:
    """Every digit at every side length in ``sizes``: {s: (n, s, s) float32 in [0, 1]}."""
    x = torch.from_numpy(images)[:, None]
    return {s: F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)[:, 0]
            .clamp_(0, 1).numpy() for s in sizes}


class ClutteredDigits(Dataset):
    """Cluttered-digits canvases of one split: ``ds[i] -> (uint8 (1, H, W), label)``."""

    def __init__(self, split: str = "train", *, canvas_size: int | tuple[int, int] = 128,
                 digit_size: int = 16, digit_size_jitter: int = 2, num_clutter: int = 12,
                 fragment_size: int = 8, near_clutter: int = 6, length: int = 6000, split_seed: int = 0,
                 seed: int = 0):
        H, W = image_hw(canvas_size, "canvas_size")
        if min(H, W) < digit_size + digit_size_jitter:
            raise ValueError(f"canvas {H} x {W} cannot hold digits of up to "
                             f"{digit_size + digit_size_jitter} px")
        if digit_size - digit_size_jitter < 4:
            raise ValueError("digit_size - digit_size_jitter must be >= 4")
        if not 0 <= near_clutter <= num_clutter:
            raise ValueError(f"near_clutter must be in [0, num_clutter = {num_clutter}], not {near_clutter}")
        self.split = split
        self.canvas_hw = (H, W)
        self.near_clutter = near_clutter
        self.sizes = range(digit_size - digit_size_jitter, digit_size + digit_size_jitter + 1)
        self.num_clutter = num_clutter
        self.fragment_size = fragment_size
        self.length = length
        self.seed = seed
        self.split_seed = split_seed
        self.epoch = 0
        images, labels = _load_digits()
        self.instances = split_indices(split, split_seed)
        self.labels = labels[self.instances]
        key = (split, split_seed, self.sizes.start, self.sizes.stop)
        if key not in _CACHE:
            _CACHE[key] = _render(images[self.instances], self.sizes)
        self.rendered = _CACHE[key]
        self._split_id = SPLITS.index(split)
        self._drawn: dict[int, tuple[torch.Tensor, int]] = {}  # val/test canvases by index

    def set_epoch(self, epoch: int) -> None:
        """Train canvases depend on the epoch; val/test are fixed."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def _rng(self, index: int) -> np.random.Generator:
        epoch = self.epoch if self.split == "train" else 0
        seed = self.seed if self.split == "train" else self.split_seed
        return np.random.default_rng([seed, self._split_id, epoch, index, 0x6F])

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} is out of range for {self.length} {self.split} canvases")

    def _place_digit(self, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """(instance, side, top, left) of a canvas's digit: the first draws of its stream."""
        H, W = self.canvas_hw
        draw = rng.integers
        k = int(draw(len(self.instances)))
        s = int(draw(self.sizes.start, self.sizes.stop))
        top, left = int(draw(0, H - s + 1)), int(draw(0, W - s + 1))
        return k, s, top, left

    def object_box(self, index: int) -> tuple[int, int, int, int]:
        """The digit's box (x1, y1, x2, y2) on canvas ``index``, without drawing the canvas: the
        object the image is about (the protocol ``gfnet report`` reads, data/datasets.py)."""
        self._check_index(index)
        _k, s, top, left = self._place_digit(self._rng(index))
        return left, top, left + s, top + s

    def sample(self, index: int) -> tuple[np.ndarray, int, tuple[int, int, int, int]]:
        """-> (canvas float32 (H, W) in [0, 1], label, digit box (x1, y1, x2, y2))."""
        self._check_index(index)
        rng = self._rng(index)
        # One scalar draw at a time: numpy's Generator gives the same numbers for integers(0,
        # (a, b)) and size=2 as for two scalar draws in turn (the stream, and so every canvas,
        # is pinned by a test), and a scalar draw costs a fifth of an array one.
        draw = rng.integers
        H, W = self.canvas_hw
        canvas = np.zeros((H, W), dtype=np.float32)
        n = len(self.instances)
        k, s, top, left = self._place_digit(rng)
        # clutter: fragments of other digits of the same split, each wholly off the digit (a
        # margin of _CLEARANCE px around its box), so a patch on the digit holds it intact
        fs = self.fragment_size
        size_lo, size_hi = self.sizes.start, self.sizes.stop
        x1, y1, x2, y2 = left - _CLEARANCE, top - _CLEARANCE, left + s + _CLEARANCE, top + s + _CLEARANCE
        for c in range(self.num_clutter):
            j = int(draw(n))
            sj = int(draw(size_lo, size_hi))
            f = min(fs, sj)
            fy, fx = int(draw(0, sj - f + 1)), int(draw(0, sj - f + 1))
            near = c < self.near_clutter
            for _try in range(_PLACEMENT_TRIES):
                if near:  # beside one side of the digit, 0-2 px beyond the margin
                    side, gap, along = int(draw(4)), int(draw(0, 3)), int(draw(-f + 1, s))
                    py, px = ((top + along, x2 + gap) if side == 0 else (top + along, x1 - gap - f) if side == 1
                              else (y2 + gap, left + along) if side == 2 else (y1 - gap - f, left + along))
                else:
                    py, px = int(draw(0, H - f + 1)), int(draw(0, W - f + 1))
                inside = 0 <= py <= H - f and 0 <= px <= W - f
                if inside and (px + f <= x1 or px >= x2 or py + f <= y1 or py >= y2):
                    region = canvas[py:py + f, px:px + f]
                    np.maximum(region, self.rendered[sj][j, fy:fy + f, fx:fx + f], out=region)
                    break  # (no free place after all tries: this fragment is left out)
        region = canvas[top:top + s, left:left + s]
        np.maximum(region, self.rendered[s][k], out=region)
        return canvas, int(self.labels[k]), (left, top, left + s, top + s)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self.split != "train":  # fixed canvases, validated every epoch: drawn once
            if index not in self._drawn:
                self._drawn[index] = self._draw(index)
            img, label = self._drawn[index]
            return img.clone(), label
        return self._draw(index)

    def _draw(self, index: int) -> tuple[torch.Tensor, int]:
        canvas, label, _ = self.sample(index)
        return torch.from_numpy(np.rint(canvas * 255.0).astype(np.uint8))[None], label


@register_dataset("digits", channels=1, num_classes=10, class_names=[str(k) for k in range(10)])
def build_cluttered_digits(cfg: Config, splits: tuple[str, ...]) -> dict[str, Dataset]:
    """The ``data.*`` digits fields as ClutteredDigits splits (canvas = model.image_size)."""
    d = cfg.data
    lengths = {"train": d.train_samples, "val": d.val_samples, "test": d.test_samples}
    try:
        return {s: ClutteredDigits(s, canvas_size=cfg.model.image_size, digit_size=d.digit_size,
                                   digit_size_jitter=d.digit_size_jitter, num_clutter=d.num_clutter,
                                   fragment_size=d.fragment_size, near_clutter=d.near_clutter,
                                   length=lengths[s],
                                   split_seed=d.split_seed, seed=cfg.run.seed)
                for s in splits}
    except ValueError as e:
        raise DataError(f"cluttered digits: {e}") from None
