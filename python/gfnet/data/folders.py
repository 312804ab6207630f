"""Real data sets: ImageFolder (ImageNet layout) and CIFAR-10/100, as uint8 tensors.

Images come out as uint8 (C, S, S) at the configured image size; normalisation happens in the
model, fused into the crop_resize that makes the glance and focus patches.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from ..errors import DataError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def eval_resize_size(image_size: int, crop_fraction: float) -> int:
    """The shorter side an evaluation image is resized to before its centre image_size crop
    (truncated, as the official code does: 224 / 0.875 = 256, 300 / 0.904 -> 331)."""
    return max(image_size, int(image_size / crop_fraction))


def _interpolation(name: str):
    from torchvision.transforms import InterpolationMode

    return {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}[name]


def _transforms(image_size: int, train: bool, small: bool = False, crop_fraction: float = 0.875,
                interpolation: str = "bilinear"):
    """Training: random resized crop + flip; evaluation: resize the shorter side to
    image_size / crop_fraction, centre crop (the model's eval_crop_fraction/eval_interpolation)."""
    from torchvision import transforms as T

    mode = _interpolation(interpolation)
    if small:  # CIFAR: pad-and-crop at native size, then resize
        ops = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if train else []
        if image_size != 32:
            ops.append(T.Resize((image_size, image_size), antialias=True))
    elif train:
        ops = [T.RandomResizedCrop(image_size, interpolation=mode, antialias=True), T.RandomHorizontalFlip()]
    else:
        ops = [T.Resize(eval_resize_size(image_size, crop_fraction), interpolation=mode, antialias=True),
               T.CenterCrop(image_size)]
    ops.append(T.PILToTensor())
    return T.Compose(ops)


def eval_transform(image_size: int, crop_fraction: float = 0.875, interpolation: str = "bilinear"):
    """PIL image -> uint8 (C, image_size, image_size): the evaluation preprocessing."""
    return _transforms(image_size, False, crop_fraction=crop_fraction, interpolation=interpolation)


def _check_folder(path: Path, what: str) -> None:
    if not path.exists():
        raise DataError(f"{what} folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise DataError(f"{what} folder {str(path)!r} is not a folder")
    classes = [d for d in path.iterdir() if d.is_dir()]
    if not classes:
        raise DataError(f"{what} folder {str(path)!r} holds no class folders "
                        "(expected <root>/<split>/<class>/<image>)")
    if not any(f.suffix.lower() in IMG_EXTENSIONS for d in classes for f in d.rglob("*")):
        raise DataError(f"{what} folder {str(path)!r} holds no images "
                        f"(looked for {', '.join(IMG_EXTENSIONS)})")


class _RGB:
    def __call__(self, img):
        return img.convert("RGB")


def image_folder(root: str, split_dir: str, image_size: int, train: bool, crop_fraction: float = 0.875,
                 interpolation: str = "bilinear") -> Dataset:
    from torchvision import datasets
    from torchvision import transforms as T

    if not root:
        raise DataError("data.root is not set: pass --data PATH (or --set data.root=PATH)")
    path = Path(root) / split_dir
    _check_folder(Path(root), "data")
    _check_folder(path, f"{split_dir!r} split")
    try:
        tf = _transforms(image_size, train, crop_fraction=crop_fraction, interpolation=interpolation)
        return datasets.ImageFolder(str(path), transform=T.Compose([_RGB(), tf]))
    except (FileNotFoundError, RuntimeError) as e:
        raise DataError(f"cannot read image folder {str(path)!r}: {e}") from None


def cifar(name: str, root: str, train: bool, image_size: int, download: bool) -> Dataset:
    from torchvision import datasets

    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
    root = root or "data"
    try:
        return cls(root, train=train, download=download, transform=_transforms(image_size, train, small=True))
    except RuntimeError as e:
        hint = "" if download else " (pass --set data.download=true to download it)"
        raise DataError(f"{name} not found under {root!r}{hint}: {e}") from None


def held_out(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split a data set into (rest, held-out fraction), fixed by the seed."""
    n = len(ds)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g).tolist()
    k = max(1, int(round(fraction * n)))
    return Subset(ds, perm[k:]), Subset(ds, perm[:k])
