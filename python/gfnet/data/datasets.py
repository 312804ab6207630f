"""The data set registry: ``register_dataset("name")`` on a function that builds the splits.

Like the backbones (``gfnet.models.backbones``), every data set is one registered builder
``build(cfg, splits) -> {"train": ..., "val": ..., "test": ...}`` of (uint8 (C, H, W) image,
label) data sets, declared beside the data it reads. ``data.dataset`` names one;
``build_datasets`` looks it up, checks the model fits it and that no split is empty,
``class_names`` reports the names of its classes, ``eval_settings`` how its images are prepared
for an evaluation, and ``Config.validate`` accepts exactly the registered names.

A data set that knows where in each image the object it is labelled by sits may say so with
``object_box(index) -> (x1, y1, x2, y2)`` in pixels of the image (the cluttered digits do):
``gfnet report`` then counts how often the policy's first focus patch holds it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from torch.utils.data import Dataset

from ..errors import DataError
from ..registry import Registry
from .class_names import dataset_classes

if TYPE_CHECKING:
    from ..config import Config, ModelConfig

SPLITS = ("train", "val", "test")

DatasetBuilder = Callable[["Config", tuple[str, ...]], dict[str, Dataset]]
# (cfg, augment) -> (training images, with the training augmentation or the evaluation
# transform, and the indices of those not held out as the val split)
CalibrationImages = Callable[["Config", bool], tuple[Dataset, list[int]]]


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    build: DatasetBuilder  # (cfg, splits) -> at least the asked splits (more is fine)
    channels: int | None = None  # image channels, when fixed: model.in_channels must match
    num_classes: int | None = None  # classes, when fixed: model.num_classes must match
    class_names: tuple[str, ...] | None = None  # the classes' names, when the data fixes them
    # the evaluation resize, when the data fixes it whatever the model's eval_crop_fraction /
    # eval_interpolation (CIFAR: whole images, scaled as in training)
    eval_crop_fraction: float | None = None
    eval_interpolation: str | None = None
    # exit-threshold calibration (data/calibration_images.py): whether the val split holds the test
    # images under a config (None: never), and the training images to calibrate on (None: the
    # training split as built, taken as it is, without augmentation of its own)
    val_is_test: Callable[[Config], bool] | None = None
    calibration_images: CalibrationImages | None = None

    def check_model(self, m: ModelConfig) -> None:
        """DataError naming the config field when the model does not fit the data."""
        if self.channels is not None and m.in_channels != self.channels:
            kind = _CHANNELS.get(self.channels, f"{self.channels}-channel")
            raise DataError(f"{self.name} images are {kind}: set model.in_channels={self.channels}")
        if self.num_classes is not None and m.num_classes != self.num_classes:
            raise DataError(f"the {self.name} data set has {self.num_classes} classes: "
                            f"set model.num_classes={self.num_classes}")


_CHANNELS = {1: "grayscale (1 channel)", 3: "RGB (3 channels)"}

DATASETS: Registry[DatasetEntry] = Registry("data set", "data.dataset")


def register_dataset(name: str, *, channels: int | None = None, num_classes: int | None = None,
                     class_names: Sequence[str] | None = None, eval_crop_fraction: float | None = None,
                     eval_interpolation: str | None = None, val_is_test: Callable[[Config], bool] | None = None,
                     calibration_images: CalibrationImages | None = None
                     ) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Decorator on ``build(cfg, splits) -> {split: data set}``; ``channels`` / ``num_classes``:
    what the model must have when the data fixes them; ``class_names``: the names of the
    classes when the data fixes them (otherwise a built data set's ``classes`` attribute names
    them, as torchvision's do); ``eval_crop_fraction`` / ``eval_interpolation``: the evaluation
    resize when the data fixes it (``eval_settings``), else the model's; ``val_is_test`` and
    ``calibration_images``: see ``DatasetEntry`` (a data set whose val split can be its test
    split, or whose training split is augmented, gives them)."""

    def deco(fn: DatasetBuilder) -> DatasetBuilder:
        names = tuple(class_names) if class_names is not None else None
        DATASETS.add(name, DatasetEntry(name, fn, channels, num_classes, names, eval_crop_fraction,
                                        eval_interpolation, val_is_test, calibration_images))
        return fn

    return deco


def list_datasets() -> list[str]:
    return DATASETS.names()


def get_dataset(name: str) -> DatasetEntry:
    return DATASETS.lookup(name)


def build_datasets(cfg: Config, splits: Sequence[str] = SPLITS) -> dict[str, Dataset]:
    """The asked splits of ``cfg.data.dataset``, each a data set of (uint8 image, label)."""
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise ValueError(f"splits must be among {SPLITS}, not {bad}")
    entry = get_dataset(cfg.data.dataset)
    entry.check_model(cfg.model)
    out = entry.build(cfg, tuple(splits))
    for split, ds in out.items():
        if len(ds) == 0:  # type: ignore[arg-type]
            raise DataError(f"the {split} split of {entry.name} is empty")
    return {s: out[s] for s in splits}


def class_names(cfg: Config, datasets: dict[str, Dataset] | None = None) -> list[str] | None:
    """The names of ``cfg.data.dataset``'s classes, in label order: the names its entry fixes,
    else the ``classes`` of its built splits (``datasets``, training split first), else None."""
    entry = get_dataset(cfg.data.dataset)
    if entry.class_names is not None:
        return list(entry.class_names)
    for split in SPLITS:
        if datasets and split in datasets:
            names = dataset_classes(datasets[split])
            if names is not None:
                return names
    return None


class EvalSettings(NamedTuple):
    crop_fraction: float
    interpolation: str
    keep_aspect: bool


def eval_settings(cfg: Config) -> EvalSettings:
    """How ``cfg``'s images are prepared for an evaluation (``preprocess.eval_preprocess``'s
    arguments after the size): the model's eval_crop_fraction and eval_interpolation, each
    unless ``cfg.data.dataset`` fixes its own, and data.keep_aspect. The data loaders' evaluation
    transform and the predictor (``gfnet.load``) both take them from here."""
    entry = get_dataset(cfg.data.dataset)
    m = cfg.model
    crop = m.eval_crop_fraction if entry.eval_crop_fraction is None else entry.eval_crop_fraction
    interpolation = m.eval_interpolation if entry.eval_interpolation is None else entry.eval_interpolation
    return EvalSettings(crop, interpolation, cfg.data.keep_aspect)
