"""Real data sets: ImageFolder (ImageNet layout) and CIFAR-10/100, as uint8 tensors, registered
as ``imagefolder``, ``cifar10`` and ``cifar100``.

Images come out as uint8 (C, H, W) at the configured image size (``model.image_size``: S or
(H, W)); normalisation happens in the model, fused into the crop_resize that makes the glance and
focus patches. Evaluation splits go through the one evaluation transform (``eval_transform``,
defined in ``preprocess.py``) that ``gfnet predict`` and the predictor use too.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from ..config import Config, image_hw
from ..errors import DataError
from .preprocess import eval_preprocess, pil_to_tensor
from .registry import register_dataset

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class EvalTransform:
    """A PIL image or (C, H, W) tensor -> the (C, H, W) model input of an evaluation: the shared
    definition of ``gfnet.data.preprocess.eval_preprocess`` (resize to cover image_size /
    crop_fraction keeping the aspect ratio, or stretched to it, then centre crop)."""

    def __init__(self, image_size: int | tuple[int, int], crop_fraction: float = 1.0,
                 interpolation: str = "bicubic", keep_aspect: bool = True):
        self.image_size, self.crop_fraction = image_size, crop_fraction
        self.interpolation, self.keep_aspect = interpolation, keep_aspect

    def __call__(self, img) -> torch.Tensor:
        x = img if isinstance(img, torch.Tensor) else pil_to_tensor(img)
        return eval_preprocess(x, self.image_size, self.crop_fraction, self.interpolation, self.keep_aspect)[0]


def eval_transform(image_size: int | tuple[int, int], crop_fraction: float, interpolation: str,
                   keep_aspect: bool = True) -> EvalTransform:
    """The evaluation transform of a model image size (S or (H, W)): scale to cover
    int(size / crop_fraction), then centre-crop the size; uint8 (C, H, W) out."""
    return EvalTransform(image_size, crop_fraction, interpolation, keep_aspect)


def model_eval_transform(cfg: Config) -> EvalTransform:
    """The evaluation transform a config's model is evaluated with (model.eval_crop_fraction,
    model.eval_interpolation, data.keep_aspect)."""
    m = cfg.model
    return eval_transform(m.image_size, m.eval_crop_fraction, m.eval_interpolation, cfg.data.keep_aspect)


def train_transform(image_size: int | tuple[int, int], keep_aspect: bool = True):
    """ImageNet-style training augmentation to (H, W): a random crop of 8 % - 100 % of the image
    with aspect ratio 3/4 - 4/3 (times W / H when ``keep_aspect``, so a non-square output is not
    stretched on average), resized to (H, W), flipped half the time; uint8 (C, H, W) out."""
    from torchvision import transforms as T

    H, W = image_hw(image_size)
    ratio = (3 / 4, 4 / 3)
    if keep_aspect:
        ratio = (ratio[0] * W / H, ratio[1] * W / H)
    return T.Compose([T.RandomResizedCrop((H, W), ratio=ratio, antialias=True), T.RandomHorizontalFlip(),
                      T.PILToTensor()])


def cifar_train_transform(image_size: int | tuple[int, int], keep_aspect: bool = True):
    """CIFAR's augmentation at its native 32 x 32 (pad-and-crop, flip), then the image brought to
    (H, W) as the evaluation does it with nothing cropped away."""
    from torchvision import transforms as T

    return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.PILToTensor(),
                      eval_transform(image_size, 1.0, "bilinear", keep_aspect)])


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


def image_folder(root: str, split_dir: str, cfg: Config, train: bool) -> Dataset:
    from torchvision import datasets
    from torchvision import transforms as T

    if not root:
        raise DataError("data.root is not set: pass --data PATH (or --set data.root=PATH)")
    path = Path(root) / split_dir
    _check_folder(Path(root), "data")
    _check_folder(path, f"{split_dir!r} split")
    try:
        transform = (train_transform(cfg.model.image_size, cfg.data.keep_aspect) if train
                     else model_eval_transform(cfg))
        return datasets.ImageFolder(str(path), transform=T.Compose([_RGB(), transform]))
    except (FileNotFoundError, RuntimeError) as e:
        raise DataError(f"cannot read image folder {str(path)!r}: {e}") from None


def cifar(name: str, root: str, train: bool, cfg: Config, download: bool,
          augment: bool | None = None) -> Dataset:
    """The training or test images of CIFAR-10/100, augmented (default: the training images)
    or through the evaluation transform."""
    from torchvision import datasets

    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
    root = root or "data"
    augment = train if augment is None else augment
    transform = (cifar_train_transform(cfg.model.image_size, cfg.data.keep_aspect) if augment
                 else model_eval_transform(cfg))
    try:
        return cls(root, train=train, download=download, transform=transform)
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
    d = cfg.data
    out: dict[str, Dataset] = {}
    if d.val_fraction > 0 and ("train" in splits or "val" in splits):
        out["train"], out["val"] = held_out_split(image_folder(d.root, d.train_dir, cfg, train=True),
                                                  image_folder(d.root, d.train_dir, cfg, train=False),
                                                  d.val_fraction, d.split_seed)
    else:
        if "train" in splits:
            out["train"] = image_folder(d.root, d.train_dir, cfg, train=True)
        if "val" in splits:
            out["val"] = image_folder(d.root, d.val_dir, cfg, train=False)
    if "test" in splits:
        out["test"] = image_folder(d.root, d.test_dir or d.val_dir, cfg, train=False)
    return out


def _register_cifar(name: str, num_classes: int) -> None:
    @register_dataset(name, channels=3, num_classes=num_classes)
    def build(cfg: Config, splits: tuple[str, ...]) -> dict[str, Dataset]:
        """torchvision's CIFAR (downloaded only with data.download=true); the test split doubles
        as the validation split unless ``val_fraction`` > 0 holds part of train out."""
        d = cfg.data
        train = cifar(name, d.root, True, cfg, d.download)
        test = cifar(name, d.root, False, cfg, d.download)
        val = test
        if d.val_fraction > 0:
            train, val = held_out_split(train, cifar(name, d.root, True, cfg, False, augment=False),
                                        d.val_fraction, d.split_seed)
        return {"train": train, "val": val, "test": test}


_register_cifar("cifar10", 10)
_register_cifar("cifar100", 100)
