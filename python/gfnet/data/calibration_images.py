"""The images exit thresholds are calibrated on: never the images they are scored on.

``gfnet eval`` scores every budget on the test split. Its thresholds come from
``calibration_split(cfg)`` (``data.calibration``):

- ``"val"``: the val split, refused when it is the test split (an ImageFolder without
  ``data.test_dir`` nor ``data.val_fraction``: val/ is then also the test set; CIFAR without
  ``data.val_fraction``);
- ``"train"``: a random subset of at most ``data.calibration_samples`` training images (the
  official code calibrates on up to 200 000 ImageNet training images), with the training
  augmentation when ``data.calibration_augment`` (as the official code does; each image's
  augmentation is fixed by ``run.seed`` and its index, so a calibration repeats exactly). With
  ``data.val_fraction`` the held-out val images are left out of it;
- ``"auto"`` (default): ``"val"`` when the val split is not the test split, else ``"train"``.

Each data set's registration (``register_dataset``) says when its val split is its test split
and which training images it offers (``val_is_test``, ``calibration_images``). What was used is
recorded in the calibration (``split``, ``details``) and in eval.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from ..config import Config
from ..errors import DataError
from .datasets import build_datasets, get_dataset


@dataclass
class CalibrationSplit:
    dataset: Dataset
    details: dict[str, Any] = field(default_factory=dict)  # "split" ("val" or "train") and how chosen

    @property
    def split(self) -> str:
        return self.details["split"]

    def describe(self) -> str:
        return describe_calibration(self.details)


def describe_calibration(record: dict[str, Any]) -> str:
    """Which images set a calibration's thresholds, in words, from its record (``split`` and
    ``details``, as eval.json's ``calibration`` holds them)."""
    d, split = record, record.get("split")
    if split == "train":
        aug = "training augmentation" if d.get("augment") else "evaluation preprocessing"
        return (f"{d['samples']} random training images of {d['of']} ({aug}, seed {d['seed']}), "
                "none of them a test image; the model may have trained on them, as in the official "
                "calibration (data.val_fraction holds images out of training instead)")
    if split == "val":
        n = f"{d['samples']} " if "samples" in d else ""
        return f"the {n}images of the val split (not the test split)"
    if d.get("source"):  # an imported official checkpoint's: "the release's dynamic_threshold"
        return str(d["source"])
    return f"the {split} split"


def val_is_test(cfg: Config) -> bool:
    """Whether build_datasets' val and test splits hold the same images (the data set's
    registration says: ImageFolder without data.test_dir or data.val_fraction, CIFAR without
    data.val_fraction)."""
    entry = get_dataset(cfg.data.dataset)
    return entry.val_is_test is not None and bool(entry.val_is_test(cfg))


class _SeededItems(Dataset):
    """Each item drawn under its own fixed seed: random augmentation that repeats exactly."""

    def __init__(self, base: Dataset, seed: int):
        self.base, self.seed = base, seed

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + i)
            return self.base[i]


def _training_images(cfg: Config, augment: bool) -> tuple[Dataset, list[int], bool]:
    """The training images to calibrate on, the indices allowed (all but the held-out val ones)
    and whether they are augmented: the data set's own ``calibration_images``, else its training
    split as built."""
    entry = get_dataset(cfg.data.dataset)
    if entry.calibration_images is not None:
        ds, allowed = entry.calibration_images(cfg, augment)
        return ds, allowed, augment
    ds = build_datasets(cfg, ("train",))["train"]  # e.g. digits: fresh canvases of the training digits
    return ds, list(range(len(ds))), False  # type: ignore[arg-type]


def calibration_split(cfg: Config) -> CalibrationSplit:
    """The images ``cfg``'s exit thresholds are calibrated on (module docstring)."""
    d = cfg.data
    choice = d.calibration
    if choice == "val" and val_is_test(cfg):
        raise DataError(
            "data.calibration=val, but the val split is the test split here: the thresholds would be "
            "calibrated on the images they are scored on. Use data.calibration=train (or auto), hold "
            "out training images with data.val_fraction, or give a separate data.test_dir")
    if choice == "auto":
        choice = "train" if val_is_test(cfg) else "val"
    if choice == "val":
        ds = build_datasets(cfg, ("val",))["val"]
        return CalibrationSplit(ds, {"split": "val", "samples": len(ds)})  # type: ignore[arg-type]
    ds, allowed, augment = _training_images(cfg, d.calibration_augment)
    g = torch.Generator().manual_seed(cfg.run.seed + 7)
    order = torch.randperm(len(allowed), generator=g).tolist()
    pick = sorted(allowed[i] for i in order[:d.calibration_samples])
    if not pick:
        raise DataError("no training images are left to calibrate the exit thresholds on")
    subset = Subset(_SeededItems(ds, cfg.run.seed) if augment else ds, pick)
    return CalibrationSplit(subset, {"split": "train", "samples": len(pick), "of": len(allowed),
                                              "augment": augment, "seed": cfg.run.seed})


__all__ = ["CalibrationSplit", "calibration_split", "describe_calibration", "val_is_test"]
