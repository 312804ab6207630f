"""What a user's image folder says about the model that fits it: ``gfnet train --data DIR``.

:func:`detect_layout` finds the splits: ``DIR/train/`` with ``DIR/val/`` and/or ``DIR/test/``,
or ``DIR`` itself holding the class folders, of which ``HELD_OUT_FRACTION`` of the images is
held out (fixed by ``data.split_seed``) as the validation split, which is then the test split
too. :func:`inspect_image_folder` reads, from that layout,

- the classes: the training split's class folders, sorted (the label order torchvision's
  ImageFolder gives them), each holding at least one image; the val and test splits must have
  the same class folders, since their labels are numbered by their own folders;
- the channels: 1 when every sampled training image is grayscale, else 3 (RGB; RGBA, palette
  and CMYK images become RGB, as the loaders read them);
- the normalisation: the per-channel mean and standard deviation of the pixels (in [0, 1]) of
  up to ``STATS_IMAGES`` training images spread evenly over the sorted file list.

:func:`fit_config_to_folder` writes those facts into a config, except where the user set a
key (``--set`` / ``--config``): a set ``model.num_classes`` that differs from the folder count
is refused with both numbers; a set channel count or normalisation is kept (the loaders convert
between grayscale and RGB). A model starting from pretrained weights keeps 3 channels and
ImageNet's normalisation, which those weights were trained with; one starting from a checkpoint
(``model.init_from``: a static baseline or a GFNet checkpoint, e.g. an imported official one)
keeps that checkpoint's channels and normalisation, for the same reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import IMAGENET_MEAN, IMAGENET_STD, Config, set_value
from ..errors import ConfigError, DataError

HELD_OUT_FRACTION = 0.2  # one folder of class folders: this part of it becomes val (and test)
STATS_IMAGES = 64  # training images decoded for the channel count and the normalisation
STATS_PIXELS_PER_SIDE = 64  # pixels are sampled on a grid of about this many per side
MIN_STD = 1e-3  # a folder of flat images would otherwise divide by zero
LAYOUT_KEYS = ("data.train_dir", "data.val_dir", "data.test_dir", "data.val_fraction")
# the keys gfnet train --data DIR fills in from the folder
INFERRED_KEYS = (
    "data.dataset",
    "data.root",
    *LAYOUT_KEYS,
    "model.num_classes",
    "model.in_channels",
    "model.mean",
    "model.std",
)
_GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def image_extensions() -> tuple[str, ...]:
    from .folders import IMG_EXTENSIONS

    return IMG_EXTENSIONS


@dataclass(frozen=True)
class Layout:
    """Where the splits of an image folder are (the config's data.* fields of the same names)."""

    train_dir: str
    val_dir: str  # "" when val is held out of the training folder
    test_dir: str  # "" when the test split is the val split
    val_fraction: float

    def describe(self) -> str:
        if self.val_fraction > 0:
            where = "the class folders" if self.train_dir == "." else f"{self.train_dir}/"
            return (
                f"{where} for training with {100 * self.val_fraction:.0f} % of the images "
                "held out for validation and testing"
            )
        if self.test_dir:
            return (
                f"{self.train_dir}/ for training, {self.val_dir}/ for validation, "
                f"{self.test_dir}/ for testing"
            )
        return f"{self.train_dir}/ for training, {self.val_dir}/ for validation and testing"


@dataclass(frozen=True)
class FolderFacts:
    root: str  # absolute path
    layout: Layout
    classes: list[str]
    images: dict[str, int]  # split folder -> image count
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    sampled: int  # training images decoded for the channels and the statistics
    modes: list[str] = field(default_factory=list)  # PIL modes seen among them

    def summary(self) -> str:
        shown = ", ".join(self.classes[:8]) + (", ..." if len(self.classes) > 8 else "")
        counts = ", ".join(f"{n} in {d}/" for d, n in self.images.items())
        kind = "grayscale" if self.channels == 1 else "RGB"
        return (
            f"{self.root}: {len(self.classes)} classes ({shown}); {counts}; "
            f"{self.layout.describe()}; {kind} ({'/'.join(self.modes)} images); "
            f"mean {_fmt(self.mean)}, std {_fmt(self.std)} over {self.sampled} training images"
        )


def _fmt(values: Iterable[float]) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def _subfolders(path: Path) -> list[str]:
    return sorted(d.name for d in path.iterdir() if d.is_dir())


def _images_under(folder: Path) -> list[Path]:
    """The image files under ``folder``, recursively (as torchvision's ImageFolder finds them)."""
    exts = image_extensions()
    found = []
    for dirpath, _dirs, files in os.walk(folder, followlinks=True):
        found += [Path(dirpath) / f for f in files if f.lower().endswith(exts)]
    return sorted(found)


def _has_images(folder: Path) -> bool:
    return any(_images_under(folder / c) for c in _subfolders(folder))


def detect_layout(root: str | Path) -> Layout:
    """The splits of an image folder (module docstring); a DataError naming what was expected."""
    path = Path(root)
    if not path.exists():
        raise DataError(f"--data {str(root)!r} does not exist")
    if not path.is_dir():
        raise DataError(f"--data {str(root)!r} is a file, not a folder of images")
    subs = set(_subfolders(path))
    if "train" in subs:
        if "val" in subs:
            return Layout("train", "val", "test" if "test" in subs else "", 0.0)
        if "test" in subs:
            return Layout("train", "test", "", 0.0)
        return Layout("train", "", "", HELD_OUT_FRACTION)
    if subs and _has_images(path):
        return Layout(".", "", "", HELD_OUT_FRACTION)
    raise DataError(
        f"--data {str(root)!r} holds neither train/ (with val/ or test/) nor class folders of "
        "images: expected DIR/train/<class>/<image> (and DIR/val/<class>/<image>), or "
        "DIR/<class>/<image>"
    )


def _split_classes(root: Path, split_dir: str) -> dict[str, int]:
    """class folder -> image count of one split; a DataError for a split without classes or a
    class folder without images (torchvision's ImageFolder refuses both)."""
    folder = root / split_dir
    if not folder.is_dir():
        raise DataError(f"split folder {str(folder)!r} does not exist")
    counts = {c: len(_images_under(folder / c)) for c in _subfolders(folder)}
    if not counts:
        raise DataError(
            f"split folder {str(folder)!r} holds no class folders "
            "(expected <split>/<class>/<image>)"
        )
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        which = (
            f"class folder {empty[0]!r} of {str(folder)!r} holds"
            if len(empty) == 1
            else f"class folders {', '.join(repr(c) for c in empty)} of {str(folder)!r} hold"
        )
        raise DataError(
            f"{which} no images (looked for {', '.join(image_extensions())}): remove "
            f"{'it' if len(empty) == 1 else 'them'} or add images"
        )
    return counts


def _sample(paths: list[Path], n: int) -> list[Path]:
    """Up to ``n`` of ``paths`` spread evenly over the list (the same ones every time)."""
    if len(paths) <= n:
        return paths
    step = len(paths) / n
    return [paths[int(i * step)] for i in range(n)]


def _pixel_statistics(
    paths: list[Path], channels: int | None = None
) -> tuple[int, list[str], tuple[float, ...], tuple[float, ...]]:
    """(channels, PIL modes seen, mean, std) of the images, the statistics over ``channels``
    channels (default: 1 when all are grayscale, else 3)."""
    import torch
    from PIL import Image, UnidentifiedImageError

    from .preprocess import pil_to_tensor, to_channels

    images, modes = [], []
    for p in paths:
        try:
            with Image.open(p) as im:
                im.load()
                modes.append(im.mode)
                images.append(pil_to_tensor(im))
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DataError(
                f"cannot read image {str(p)!r} ({type(e).__name__}: {e}): remove it or replace "
                "it with a readable one"
            ) from None
    if channels is None:
        channels = 1 if all(m in _GRAY_MODES for m in modes) else 3
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    count = 0
    for img in images:
        stride = max(1, max(img.shape[-2:]) // STATS_PIXELS_PER_SIDE)
        x = to_channels(img[:, ::stride, ::stride], channels).to(torch.float64)
        if not img.is_floating_point():
            x = x / 255.0
        x = x.reshape(channels, -1)
        total += x.sum(1)
        squares += (x * x).sum(1)
        count += x.shape[1]
    mean = total / count
    std = (squares / count - mean * mean).clamp(min=0).sqrt().clamp(min=MIN_STD)
    return (
        channels,
        sorted(set(modes)),
        tuple(round(float(v), 4) for v in mean),
        tuple(round(float(v), 4) for v in std),
    )


def inspect_image_folder(
    root: str | Path, layout: Layout | None = None, channels: int | None = None
) -> FolderFacts:
    """The facts of an image folder (module docstring); ``layout``: the splits, when the user
    named them (default: :func:`detect_layout`); ``channels``: the channel count the statistics
    are taken over, when the user chose it (default: the images')."""
    path = Path(root).expanduser().resolve()
    layout = layout or detect_layout(path)
    train = _split_classes(path, layout.train_dir)
    classes = sorted(train)
    images = {layout.train_dir: sum(train.values())}
    for split_dir in dict.fromkeys(d for d in (layout.val_dir, layout.test_dir) if d):
        counts = _split_classes(path, split_dir)
        if sorted(counts) != classes:
            missing = sorted(set(classes) - set(counts))
            extra = sorted(set(counts) - set(classes))
            raise DataError(
                f"the class folders of {str(path / split_dir)!r} are not those of "
                f"{str(path / layout.train_dir)!r}"
                + (f": missing {', '.join(missing)}" if missing else "")
                + (f"; not in training: {', '.join(extra)}" if extra else "")
                + " (labels are numbered by the sorted folder names, so every split needs the same"
                " folders)"
            )
        images[split_dir] = sum(counts.values())
    train_images = _images_under(path / layout.train_dir)
    sampled = _sample(train_images, STATS_IMAGES)
    channels, modes, mean, std = _pixel_statistics(sampled, channels)
    return FolderFacts(str(path), layout, classes, images, channels, mean, std, len(sampled), modes)


def normalise_key(cfg: Config, key: str) -> str:
    """A config key as section.field (a bare field name is resolved as ``--set`` resolves it)."""
    from ..config.overrides import _resolve_key  # the one place that resolves bare keys

    owner, name = _resolve_key(cfg, key)
    if owner is cfg:
        return name
    section = next(s for s in ("model", "data", "optim", "ppo", "run") if getattr(cfg, s) is owner)
    return f"{section}.{name}"


def explicit_keys(cfg: Config, *settings: dict[str, Any]) -> set[str]:
    """The section.field keys a user set: ``settings`` are the YAML file's mapping (nested by
    section) and the ``--set`` overrides (dotted or bare)."""
    keys: set[str] = set()
    for d in settings:
        for k, v in d.items():
            if isinstance(v, dict) and k in ("model", "data", "optim", "ppo", "run"):
                keys.update(f"{k}.{sub}" for sub in v)
            elif k != "preset":
                keys.add(normalise_key(cfg, k))
    return keys


def _starting_weights_input(cfg: Config) -> tuple[int, list[float], list[float]] | None:
    """(channels, mean, std) the weights a model starts from were trained with, or None when it
    starts from random weights: ImageNet's RGB normalisation for ``model.pretrained``, the stored
    model config of the ``model.init_from`` checkpoint (a baseline or GFNet one)."""
    if cfg.model.init_from:
        from ..checkpoint import load

        saved = load(cfg.model.init_from).get("config", {}).get("model", {})
        if all(k in saved for k in ("in_channels", "mean", "std")):
            return int(saved["in_channels"]), list(saved["mean"]), list(saved["std"])
    if cfg.model.pretrained:
        return 3, list(IMAGENET_MEAN), list(IMAGENET_STD)
    return None


def fit_config_to_folder(
    cfg: Config, root: str | Path, explicit: set[str] = frozenset()
) -> FolderFacts | None:
    """Fill ``cfg`` in from the image folder ``root`` (module docstring); returns its facts, or
    None when the user chose another data set (``data.dataset`` set to something else: then
    ``root`` is only that data set's ``data.root``). Validates the result."""
    if "data.dataset" in explicit and cfg.data.dataset != "imagefolder":
        cfg.data.root = str(root)
        cfg.validate()
        return None
    layout = None
    if any(k in explicit for k in LAYOUT_KEYS):  # the user named the splits
        d = cfg.data
        layout = Layout(d.train_dir, d.val_dir, d.test_dir, d.val_fraction)
    start = _starting_weights_input(cfg)  # what the weights the model starts from expect
    channels = (
        cfg.model.in_channels
        if "model.in_channels" in explicit
        else start[0] if start is not None else None
    )
    facts = inspect_image_folder(root, layout, channels)
    found = len(facts.classes)
    if "model.num_classes" in explicit and cfg.model.num_classes != found:
        raise ConfigError(
            f"model.num_classes={cfg.model.num_classes}, but --data {str(root)!r} has {found} "
            f"class folders ({', '.join(facts.classes[:10])}{', ...' if found > 10 else ''}): "
            f"drop the setting (the folders decide it) or set model.num_classes={found}"
        )
    if found < 2:
        raise DataError(
            f"--data {str(root)!r} has {found} class folder ({', '.join(facts.classes)}): a "
            "classifier needs at least 2 classes"
        )
    values: dict[str, Any] = {
        "data.dataset": "imagefolder",
        "data.root": facts.root,
        "data.train_dir": facts.layout.train_dir,
        "data.val_dir": facts.layout.val_dir,
        "data.test_dir": facts.layout.test_dir,
        "data.val_fraction": facts.layout.val_fraction,
        "model.num_classes": found,
        "model.in_channels": facts.channels,
        "model.mean": start[1] if start is not None else facts.mean,
        "model.std": start[2] if start is not None else facts.std,
    }
    for key, value in values.items():
        if key == "data.root" or key not in explicit:
            set_value(cfg, key, value)
    cfg.validate()
    return facts


__all__ = [
    "FolderFacts",
    "HELD_OUT_FRACTION",
    "INFERRED_KEYS",
    "Layout",
    "detect_layout",
    "explicit_keys",
    "fit_config_to_folder",
    "inspect_image_folder",
    "normalise_key",
]
