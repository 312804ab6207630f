"""Real data sets: ImageFolder (ImageNet layout) and CIFAR-10/100, as uint8 tensors, registered
as ``imagefolder``, ``cifar10`` and ``cifar100``.

Images come out as uint8 (C, S, S) at the configured image size; normalisation happens in the
model, fused into the crop_resize that makes the glance and focus patches.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from ..config import Config
from ..errors import DataError
from .registry import register_dataset

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _transforms(image_size: int, train: bool, small: bool = False):
    from torchvision import transforms as T

    if small:  # CIFAR: pad-and-crop at native size, then resize
        ops = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if train else []
        if image_size != 32:
            ops.append(T.Resize((image_size, image_size), antialias=True))
    elif train:
        ops = [T.RandomResizedCrop(image_size, antialias=True), T.RandomHorizontalFlip()]
    else:
        ops = [T.Resize(int(round(image_size / 0.875)), antialias=True), T.CenterCrop(image_size)]
    ops.append(T.PILToTensor())
    return T.Compose(ops)


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


def image_folder(root: str, split_dir: str, image_size: int, train: bool) -> Dataset:
    from torchvision import datasets
    from torchvision import transforms as T

    if not root:
        raise DataError("data.root is not set: pass --data PATH (or --set data.root=PATH)")
    path = Path(root) / split_dir
    _check_folder(Path(root), "data")
    _check_folder(path, f"{split_dir!r} split")
    try:
        return datasets.ImageFolder(str(path), transform=T.Compose([_RGB(), _transforms(image_size, train)]))
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


def held_out_split(train: Dataset, held_out_view: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """(the rest of ``train``, the held-out ``fraction``) of one set of images, fixed by ``seed``:
    ``held_out_view`` is the same images with evaluation transforms (no augmentation)."""
    n = len(train)  # type: ignore[arg-type]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    k = max(1, int(round(fraction * n)))
    return Subset(train, perm[k:]), Subset(held_out_view, perm[:k])


# ---------------------------------------------------------------------- registered data sets
@register_dataset("imagefolder", channels=3)
def build_image_folder(cfg: Config, splits: tuple[str, ...]) -> dict[str, Dataset]:
    """``<root>/<train_dir>/<class>/*`` and ``<root>/<val_dir>/...`` (ImageNet layout); the test
    split is ``test_dir`` if set, else the validation folder; ``val_fraction`` > 0 holds part
    of the training folder out as the validation split instead."""
    d, size = cfg.data, cfg.model.image_size
    out: dict[str, Dataset] = {}
    if d.val_fraction > 0 and ("train" in splits or "val" in splits):
        out["train"], out["val"] = held_out_split(image_folder(d.root, d.train_dir, size, train=True),
                                                  image_folder(d.root, d.train_dir, size, train=False),
                                                  d.val_fraction, d.split_seed)
    else:
        if "train" in splits:
            out["train"] = image_folder(d.root, d.train_dir, size, train=True)
        if "val" in splits:
            out["val"] = image_folder(d.root, d.val_dir, size, train=False)
    if "test" in splits:
        out["test"] = image_folder(d.root, d.test_dir or d.val_dir, size, train=False)
    return out


def _register_cifar(name: str, num_classes: int) -> None:
    @register_dataset(name, channels=3, num_classes=num_classes)
    def build(cfg: Config, splits: tuple[str, ...]) -> dict[str, Dataset]:
        """torchvision's CIFAR (downloaded only with data.download=true); the test split doubles
        as the validation split unless ``val_fraction`` > 0 holds part of train out."""
        d, size = cfg.data, cfg.model.image_size
        train = cifar(name, d.root, True, size, d.download)
        test = cifar(name, d.root, False, size, d.download)
        val = test
        if d.val_fraction > 0:
            train, val = held_out_split(train, cifar(name, d.root, True, size, False), d.val_fraction, d.split_seed)
        return {"train": train, "val": val, "test": test}


_register_cifar("cifar10", 10)
_register_cifar("cifar100", 100)
