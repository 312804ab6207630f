"""Data sets: ``build_datasets(cfg) -> {"train", "val", "test"}`` of (uint8 image, label)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Subset

from ..config import Config
from ..errors import DataError
from .cluttered_digits import ClutteredDigits, split_indices
from .folders import cifar, image_folder

__all__ = ["ClutteredDigits", "build_datasets", "read_image", "split_indices"]


def _fraction_split(train_aug: Dataset, train_eval: Dataset, fraction: float, seed: int):
    n = len(train_aug)  # type: ignore[arg-type]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    k = max(1, int(round(fraction * n)))
    return Subset(train_aug, perm[k:]), Subset(train_eval, perm[:k])


def build_datasets(cfg: Config, splits: tuple[str, ...] = ("train", "val", "test")) -> dict[str, Dataset]:
    d, m = cfg.data, cfg.model
    out: dict[str, Dataset] = {}
    if d.dataset == "digits":
        if m.in_channels != 1:
            raise DataError("the digits data set has 1 channel: set model.in_channels=1")
        if m.num_classes != 10:
            raise DataError("the digits data set has 10 classes: set model.num_classes=10")
        lengths = {"train": d.train_samples, "val": d.val_samples, "test": d.test_samples}
        for s in splits:
            try:
                out[s] = ClutteredDigits(s, canvas_size=m.image_size, digit_size=d.digit_size,
                                         digit_size_jitter=d.digit_size_jitter, num_clutter=d.num_clutter,
                                         fragment_size=d.fragment_size, near_clutter=d.near_clutter,
                                         length=lengths[s],
                                         split_seed=d.split_seed, seed=cfg.run.seed)
            except ValueError as e:
                raise DataError(f"cluttered digits: {e}") from None
        return out
    if m.in_channels != 3:
        raise DataError(f"{d.dataset} images are RGB: set model.in_channels=3")
    if d.dataset == "imagefolder":
        if "train" in splits:
            out["train"] = image_folder(d.root, d.train_dir, m.image_size, train=True)
        if "val" in splits or "test" in splits:
            if d.val_fraction > 0:
                tr = image_folder(d.root, d.train_dir, m.image_size, train=True)
                ev = image_folder(d.root, d.train_dir, m.image_size, train=False)
                rest, val = _fraction_split(tr, ev, d.val_fraction, d.split_seed)
                if "train" in splits:
                    out["train"] = rest
                out["val"] = val
            else:
                out["val"] = image_folder(d.root, d.val_dir, m.image_size, train=False)
            out["test"] = (image_folder(d.root, d.test_dir, m.image_size, train=False)
                           if d.test_dir else image_folder(d.root, d.val_dir, m.image_size, train=False))
    else:  # cifar10 / cifar100
        ncls = 10 if d.dataset == "cifar10" else 100
        if m.num_classes != ncls:
            raise DataError(f"{d.dataset} has {ncls} classes: set model.num_classes={ncls}")
        train = cifar(d.dataset, d.root, True, m.image_size, d.download)
        test = cifar(d.dataset, d.root, False, m.image_size, d.download)
        if d.val_fraction > 0:
            ev = cifar(d.dataset, d.root, True, m.image_size, False)
            train, val = _fraction_split(train, ev, d.val_fraction, d.split_seed)
        else:
            val = test
        out = {"train": train, "val": val, "test": test}
    for name, ds in out.items():
        if len(ds) == 0:  # type: ignore[arg-type]
            raise DataError(f"the {name} split of {d.dataset} is empty")
    return {k: v for k, v in out.items() if k in splits}


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
