"""Real data sets: ImageFolder (ImageNet layout) and CIFAR-10/100, as uint8 tensors, registered
as ``imagefolder``, ``cifar10`` and ``cifar100``.

Images come out as uint8 (C, H, W) at the configured image size (``model.image_size``: S or
(H, W)); normalisation happens in the model, fused into the crop_resize that makes the glance and
focus patches. Evaluation splits go through ``eval_transform``, a wrapper of
``preprocess.eval_preprocess``: the evaluation resize and crop the predictor (``gfnet.load``,
which ``gfnet predict`` runs) applies too.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from ..config import Config, image_hw
from ..errors import DataError
from .preprocess import eval_preprocess, pil_to_tensor
from .datasets import eval_settings, register_dataset

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# CIFAR's 32 x 32 images are whole pictures, trained on whole (pad-and-crop at 32, then scaled to
# the model's size): evaluation scales them the same way and crops nothing, whatever the model's
# eval_crop_fraction (which is for photos with a border to spare, e.g. 224 of 256)
CIFAR_CROP_FRACTION = 1.0
CIFAR_INTERPOLATION = "bilinear"


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
    """The evaluation transform a config's model is evaluated with on its data set
    (``datasets.eval_settings``: the model's eval_crop_fraction and eval_interpolation unless the
    data set fixes its own, data.keep_aspect)."""
    return eval_transform(cfg.model.image_size, *eval_settings(cfg))


def train_transform(image_size: int | tuple[int, int], keep_aspect: bool = True,
                    interpolation: str = "bilinear", *,
                    crop_scale: tuple[float, float] = (0.08, 1.0), hflip: bool = True,
                    color_jitter: float = 0.0, auto_augment: str = "none"):
    """Training augmentation of a PIL image to (H, W), ImageNet-style by default: a random crop
    of ``crop_scale`` (8 % - 100 %) of the image's area with aspect ratio 3/4 - 4/3 (times W / H
    when ``keep_aspect``, so a non-square output is not stretched on average), resized to (H, W)
    with ``interpolation``, flipped half the time (``hflip``), then optionally a colour jitter
    (brightness, contrast and saturation by up to ``color_jitter``, hue by a quarter of it) and
    torchvision's RandAugment or TrivialAugmentWide (``auto_augment``); uint8 (C, H, W) out."""
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    H, W = image_hw(image_size)
    ratio = (3 / 4, 4 / 3)
    if keep_aspect:
        ratio = (ratio[0] * W / H, ratio[1] * W / H)
    mode = InterpolationMode.BICUBIC if interpolation == "bicubic" else InterpolationMode.BILINEAR
    steps = [T.RandomResizedCrop((H, W), scale=tuple(crop_scale), ratio=ratio, interpolation=mode,
                                 antialias=True)]
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    if color_jitter > 0:
        j = color_jitter
        steps.append(T.ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(0.5, j / 4)))
    if auto_augment == "randaugment":
        steps.append(T.RandAugment(interpolation=mode))
    elif auto_augment == "trivialaugment":
        steps.append(T.TrivialAugmentWide(interpolation=mode))
    return T.Compose([*steps, T.PILToTensor()])


def config_train_transform(cfg: Config, interpolation: str = "bilinear"):
    """``train_transform`` with the config's model size and data augmentation settings."""
    d = cfg.data
    return train_transform(cfg.model.image_size, d.keep_aspect, interpolation,
                           crop_scale=d.crop_scale, hflip=d.hflip, color_jitter=d.color_jitter,
                           auto_augment=d.auto_augment)


def cifar_train_transform(image_size: int | tuple[int, int], keep_aspect: bool = True):
    """CIFAR's augmentation at its native 32 x 32 (pad-and-crop, flip), then the image brought to
    (H, W) as the evaluation does it with nothing cropped away."""
    from torchvision import transforms as T

    return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.PILToTensor(),
                      eval_transform(image_size, CIFAR_CROP_FRACTION, CIFAR_INTERPOLATION, keep_aspect)])


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


class _ConvertMode:
    """A PIL image -> grayscale ("L") or RGB, the model's channels (RGBA, palette and CMYK
    images become RGB, RGB becomes grayscale by PIL's ITU-R 601-2 luma, as ``to_channels``)."""

    def __init__(self, channels: int):
        if channels not in (1, 3):
            raise DataError(f"model.in_channels={channels}: image folders are read as 1 "
                            "(grayscale) or 3 (RGB) channels")
        self.mode = "L" if channels == 1 else "RGB"

    def __call__(self, img):
        return img.convert(self.mode)


def image_folder(split_dir: str, cfg: Config, train: bool = False, transform=None) -> Dataset:
    """The images of ``<data.root>/<split_dir>`` with the training augmentation (``train``) or the
    config's evaluation transform; ``transform``: another transform instead of either."""
    from torchvision import datasets
    from torchvision import transforms as T

    root = cfg.data.root
    if not root:
        raise DataError("data.root is not set: pass --data PATH (or --set data.root=PATH)")
    path = Path(root) / split_dir
    _check_folder(Path(root), "data")
    _check_folder(path, f"{split_dir!r} split")
    try:
        if transform is None:
            transform = config_train_transform(cfg) if train else model_eval_transform(cfg)
        convert = _ConvertMode(cfg.model.in_channels)
        return datasets.ImageFolder(str(path), transform=T.Compose([convert, transform]))
    except (FileNotFoundError, RuntimeError) as e:
        raise DataError(f"cannot read image folder {str(path)!r}: {e}") from None


def cifar(name: str, train: bool, cfg: Config, download: bool, augment: bool | None = None) -> Dataset:
    """The training or test images of CIFAR-10/100, augmented (default: the training images)
    or through the evaluation transform."""
    from torchvision import datasets

    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
    root = cfg.data.root or "data"
    augment = train if augment is None else augment
    transform = (cifar_train_transform(cfg.model.image_size, cfg.data.keep_aspect) if augment
                 else model_eval_transform(cfg))
    try:
        return cls(root, train=train, download=download, transform=transform)
    except RuntimeError as e:
        hint = "" if download else " (pass --set data.download=true to download it)"
        raise DataError(f"{name} not found under {root!r}{hint}: {e}") from None


def held_out_indices(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(the rest, the held-out ``fraction``) of the indices 0 .. n-1, fixed by ``seed``."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    k = max(1, int(round(fraction * n)))
    return perm[k:], perm[:k]


def held_out_splits(cfg: Config, splits: tuple[str, ...], training_images: Callable[[bool], Dataset]
                    ) -> dict[str, Dataset]:
    """The asked ones of the train and val splits when ``data.val_fraction`` holds part of the
    training images out as the val split (fixed by ``data.split_seed``): the rest of them
    augmented (``training_images(True)``), the held-out part through the evaluation transform
    (``training_images(False)``, the same images). Only the views the asked splits need are built."""
    views = {s: training_images(s == "train") for s in ("train", "val") if s in splits}
    if not views:
        return {}
    d, n = cfg.data, len(next(iter(views.values())))  # type: ignore[arg-type]
    rest, held = held_out_indices(n, d.val_fraction, d.split_seed)
    return {s: Subset(ds, rest if s == "train" else held) for s, ds in views.items()}


def _not_held_out(cfg: Config, n: int) -> list[int]:
    """The indices of the n training images that ``data.val_fraction`` does not hold out."""
    d = cfg.data
    return sorted(held_out_indices(n, d.val_fraction, d.split_seed)[0]) if d.val_fraction > 0 else list(range(n))


def _image_folder_val_is_test(cfg: Config) -> bool:
    """val/ is scored as the test split too, unless val_fraction holds training images out as
    the val split or test_dir names another folder."""
    d = cfg.data
    if d.val_fraction > 0:  # held out: it is the test split too when no folder is named for testing
        return not d.test_dir and not d.val_dir
    return not d.test_dir or d.test_dir.rstrip("/") == d.val_dir.rstrip("/")


def _image_folder_calibration(cfg: Config, augment: bool) -> tuple[Dataset, list[int]]:
    """The training folder for the exit-threshold calibration: augmented as the official
    calibration does (random crops resized with the model's evaluation interpolation), or
    through the evaluation transform."""
    d, m = cfg.data, cfg.model
    tf = config_train_transform(cfg, m.eval_interpolation) if augment else model_eval_transform(cfg)
    ds = image_folder(d.train_dir, cfg, transform=tf)
    return ds, _not_held_out(cfg, len(ds))  # type: ignore[arg-type]


# ---------------------------------------------------------------------- registered data sets
@register_dataset("imagefolder", val_is_test=_image_folder_val_is_test,
                  calibration_images=_image_folder_calibration)
def build_image_folder(cfg: Config, splits: tuple[str, ...]) -> dict[str, Dataset]:
    """``<root>/<train_dir>/<class>/*`` and ``<root>/<val_dir>/...`` (ImageNet layout); the test
    split is ``test_dir`` if set, else the validation folder; ``val_fraction`` > 0 holds part
    of the training folder out as the validation split instead, which is also the test split
    when neither ``test_dir`` nor ``val_dir`` names a folder. Images are read as grayscale or
    RGB, whichever ``model.in_channels`` asks for."""
    d = cfg.data
    out: dict[str, Dataset] = {}
    if d.val_fraction > 0:
        test_is_held_out = "test" in splits and not (d.test_dir or d.val_dir)
        held_splits = tuple(splits) + (("val",) if test_is_held_out else ())
        out.update(held_out_splits(cfg, held_splits,
                                   lambda augment: image_folder(d.train_dir, cfg, train=augment)))
        if test_is_held_out:
            out["test"] = out["val"]
            return out
    else:
        if "train" in splits:
            out["train"] = image_folder(d.train_dir, cfg, train=True)
        if "val" in splits:
            out["val"] = image_folder(d.val_dir, cfg)
    if "test" in splits:
        out["test"] = image_folder(d.test_dir or d.val_dir, cfg)
    return out


def _register_cifar(name: str, num_classes: int) -> None:
    def calibration_images(cfg: Config, augment: bool) -> tuple[Dataset, list[int]]:
        ds = cifar(name, True, cfg, cfg.data.download, augment=augment)
        return ds, _not_held_out(cfg, len(ds))  # type: ignore[arg-type]

    @register_dataset(name, channels=3, num_classes=num_classes, eval_crop_fraction=CIFAR_CROP_FRACTION,
                      eval_interpolation=CIFAR_INTERPOLATION,
                      val_is_test=lambda cfg: cfg.data.val_fraction <= 0,  # the test split doubles as val
                      calibration_images=calibration_images)
    def build(cfg: Config, splits: tuple[str, ...]) -> dict[str, Dataset]:
        """torchvision's CIFAR (downloaded only with data.download=true); the test split doubles
        as the validation split unless ``val_fraction`` > 0 holds part of train out. Only what
        the asked splits need is built; the first data set built downloads the archive (train
        and test images) with data.download=true."""
        d = cfg.data
        downloads = itertools.chain([d.download], itertools.repeat(False))
        out: dict[str, Dataset] = {}
        if d.val_fraction > 0:
            out.update(held_out_splits(cfg, splits, lambda augment: cifar(name, True, cfg, next(downloads),
                                                                          augment=augment)))
        elif "train" in splits:
            out["train"] = cifar(name, True, cfg, next(downloads))
        if "test" in splits or ("val" in splits and d.val_fraction <= 0):
            out["test"] = cifar(name, False, cfg, next(downloads))
            if d.val_fraction <= 0:
                out["val"] = out["test"]
        return out


_register_cifar("cifar10", 10)
_register_cifar("cifar100", 100)
