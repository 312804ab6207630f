from __future__ import annotations

import numpy as np
import pytest
import torch

from gfnet.data import ClutteredDigits, build_datasets, split_indices


def test_splits_are_disjoint_digit_instances():
    tr, va, te = (set(split_indices(s).tolist()) for s in ("train", "val", "test"))
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert len(tr | va | te) == 1797


def test_canvas_shape_label_and_box():
    ds = ClutteredDigits("test", length=5)
    img, label = ds[3]
    assert img.shape == (1, 128, 128) and img.dtype == torch.uint8 and 0 <= label <= 9
    canvas, label2, (x1, y1, x2, y2) = ds.sample(3)
    assert label2 == label and 14 <= x2 - x1 <= 18 and x2 - x1 == y2 - y1
    assert 0 <= x1 and x2 <= 128 and 0 <= y1 and y2 <= 128
    assert canvas[y1:y2, x1:x2].max() > 0.5  # the digit is there


def test_val_test_fixed_train_resampled_per_epoch():
    a, b = ClutteredDigits("val", length=4), ClutteredDigits("val", length=4)
    assert torch.equal(a[2][0], b[2][0])
    b.set_epoch(3)
    assert torch.equal(a[2][0], b[2][0])  # val ignores the epoch
    t = ClutteredDigits("train", length=4)
    x0 = t[1][0]
    t.set_epoch(1)
    assert not torch.equal(x0, t[1][0])
    t.set_epoch(0)
    assert torch.equal(x0, t[1][0])  # deterministic in (seed, epoch, index)


def test_build_datasets_from_preset(tiny_cfg):
    ds = build_datasets(tiny_cfg())
    assert {k: len(v) for k, v in ds.items()} == {"train": 16, "val": 8, "test": 8}
    assert np.unique([ds["test"][i][1] for i in range(8)]).size >= 2


def test_imagefolder_trains_one_step(tmp_path, capsys):
    """ImageNet-layout folder -> uint8 crops -> a reduced mobilenet preset trains one step."""
    from PIL import Image

    from gfnet.cli import main

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            d = tmp_path / "data" / split / cls
            d.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(d / f"{i}.png")
    rc = main(["train", "--preset", "mobilenet_v3_large-p96", "--data", str(tmp_path / "data"),
               "--out", str(tmp_path / "o"), "--stage", "1", "--epochs", "1", "--batch-size", "4",
               "--no-progress", "--set", "model.image_size=48", "--set", "model.patch_size=32",
               "--set", "model.num_classes=2", "--set", "data.num_workers=0", "--set", "run.threads=1"])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "o" / "stage1.pt").exists()


def test_clutter_stays_off_the_digit_and_digit_box_needs_no_canvas():
    """Fragments keep 2 px clear of the digit's box, so a patch on the digit holds it intact: the
    box and its margin are the same as on a canvas without clutter (same stream of draws)."""
    kw = dict(canvas_size=64, digit_size=16, digit_size_jitter=2, fragment_size=8, length=40)
    cluttered = ClutteredDigits("val", num_clutter=30, near_clutter=10, **kw)
    clean = ClutteredDigits("val", num_clutter=0, near_clutter=0, **kw)
    for i in range(40):
        canvas, label, (x1, y1, x2, y2) = cluttered.sample(i)
        bare, label0, box0 = clean.sample(i)
        assert (label, (x1, y1, x2, y2)) == (label0, box0) == (label0, cluttered.digit_box(i))
        window = (slice(max(y1 - 2, 0), y2 + 2), slice(max(x1 - 2, 0), x2 + 2))
        assert np.array_equal(canvas[window], bare[window])
        assert (canvas > 0).sum() > (bare > 0).sum()  # the clutter is there, elsewhere


def test_near_clutter_sits_beside_the_digit():
    kw = dict(canvas_size=96, digit_size=16, digit_size_jitter=2, fragment_size=8, length=30)
    ds = ClutteredDigits("test", num_clutter=4, near_clutter=4, **kw)
    reach = 2 + 2 + 8  # margin, up to 2 px more, a fragment
    for i in range(30):
        canvas, _, (x1, y1, x2, y2) = ds.sample(i)
        ys, xs = np.nonzero(canvas)
        assert ys.min() >= y1 - reach and ys.max() < y2 + reach and xs.min() >= x1 - reach and xs.max() < x2 + reach
    far = ClutteredDigits("test", num_clutter=4, near_clutter=0, **kw)
    spread = [np.ptp(np.nonzero(far.sample(i)[0])[1]) for i in range(30)]
    assert max(spread) > 16 + 2 * reach  # without near_clutter the fragments go anywhere
    with pytest.raises(ValueError, match="near_clutter"):
        ClutteredDigits("test", num_clutter=2, near_clutter=3)
