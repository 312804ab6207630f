"""Which images set the exit thresholds (never the test images), and the evaluation
preprocessing of image files (the model's crop fraction and interpolation)."""

from __future__ import annotations

import pytest
import torch

from gfnet.config import build_config
from gfnet.data.calibration_images import calibration_split, val_is_test
from gfnet.errors import DataError

from .conftest import make_image_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("imgs"), classes=("a", "b"),
                             splits=("train", "val", "test"), per_split={"train": 5, "val": 2, "test": 2},
                             size=lambda i: (60 + 7 * i, 80), seed=1)


def _cfg(folder, *extra):
    return build_config("mobilenet_v3_large-p96", overrides=[f"data.root={folder}", "model.image_size=48",
                                                             "model.patch_size=32", *extra])


def test_val_is_the_test_split_unless_separated(folder):
    assert val_is_test(_cfg(folder))  # ImageNet layout: val/ is what gets scored
    assert not val_is_test(_cfg(folder, "data.test_dir=test"))
    assert not val_is_test(_cfg(folder, "data.val_fraction=0.2"))
    assert not val_is_test(build_config("digits"))


def test_auto_calibrates_on_training_images_when_val_is_test(folder):
    split = calibration_split(_cfg(folder))
    assert split.split == "train" and split.details["samples"] == 10 and split.details["augment"]
    assert "none of them a test image" in split.describe()
    # seeded augmentation: the same images, pixel for pixel, every time
    again = calibration_split(_cfg(folder))
    for i in range(3):
        assert torch.equal(split.dataset[i][0], again.dataset[i][0])
    assert not torch.equal(split.dataset[0][0], calibration_split(_cfg(folder, "run.seed=5")).dataset[0][0])
    small = calibration_split(_cfg(folder, "data.calibration_samples=4", "data.calibration_augment=false"))
    assert small.details["samples"] == 4 and not small.details["augment"]


def test_held_out_val_is_used_and_kept_out_of_a_training_calibration(folder):
    cfg = _cfg(folder, "data.val_fraction=0.3")
    split = calibration_split(cfg)
    assert split.split == "val" and split.details["samples"] == 3
    train = calibration_split(_cfg(folder, "data.val_fraction=0.3", "data.calibration=train"))
    val_idx = set(split.dataset.indices)
    assert train.details["samples"] == 7 and not val_idx & set(train.dataset.indices)
    assert calibration_split(_cfg(folder, "data.test_dir=test")).split == "val"


def test_calibrating_on_the_test_images_is_refused(folder):
    with pytest.raises(DataError, match="val split is the test split"):
        calibration_split(_cfg(folder, "data.calibration=val"))


def test_predict_reads_files_as_the_evaluation_loader_does(folder):
    """read_image, the predictor (gfnet predict) and the eval/test loader give the same pixels,
    with the model's crop fraction and interpolation (one definition: data/preprocess.py)."""
    from gfnet.data import build_datasets, read_image
    from gfnet.data.preprocess import eval_geometry
    from gfnet.models import build_model
    from gfnet.predictor import Predictor

    for extra in ([], ["model.eval_crop_fraction=0.904", "model.eval_interpolation=bicubic"]):
        cfg = _cfg(folder, *extra)
        ds = build_datasets(cfg, ("test",))["test"]
        path, _ = ds.samples[3]
        m = cfg.model
        loaded = ds[3][0]
        torch.testing.assert_close(read_image(path, 3, m.image_size, m.eval_crop_fraction, m.eval_interpolation),
                                   loaded, rtol=0, atol=0)
        predictor = Predictor(build_model(m), cfg)
        torch.testing.assert_close(predictor.preprocess(path)[0].image, loaded, rtol=0, atol=0)
    # the official per-model resize: shorter side int(size / crop fraction)
    for size, crop, side in [(224, 0.875, 256), (300, 0.904, 331), (260, 0.875, 297)]:
        assert min(eval_geometry((500, 400), size, crop).resized_hw) == side
