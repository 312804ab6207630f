"""The static baseline model and starting GFNet's encoders from it (model.init_from)."""

from __future__ import annotations

import pytest
import torch

from .conftest import tiny_overrides


@pytest.fixture(scope="module")
def baseline_ckpt(tmp_path_factory):
    from gfnet.config import build_config
    from gfnet.train.baseline import train_baseline

    out = tmp_path_factory.mktemp("baseline")
    cfg = build_config("digits", overrides=tiny_overrides(**{"optim.epochs_stage1": 1, "optim.epochs_stage3": 0}))
    ck = train_baseline(cfg, out)
    assert ck["done"] and ck["epochs"] == 1
    return out / "baseline.pt", cfg


def test_static_baseline_normalises_like_crop_resize(baseline_ckpt):
    """uint8 images are scaled to [0, 1] then normalised, exactly as GFNet's patches are."""
    import gfkernels
    from gfnet.checkpoint import load_baseline_model

    model, cfg, _ = load_baseline_model(baseline_ckpt[0])
    images = torch.randint(0, 256, (3, 1, 128, 128), dtype=torch.uint8)
    whole = torch.tensor([[0.0, 0.0, 128.0, 128.0]]).expand(3, 4)
    same = gfkernels.crop_resize(images, whole, 128, mean=list(cfg.model.mean), std=list(cfg.model.std))
    with torch.no_grad():
        want = model.backbone.head(model.backbone(same)[0])
        torch.testing.assert_close(model(images), want, rtol=1e-5, atol=1e-5)
    assert "mean" not in model.state_dict()  # config constants, not weights


def test_init_from_copies_the_baseline_into_both_encoders(baseline_ckpt):
    from gfnet.train import Trainer

    path, cfg = baseline_ckpt
    gcfg = cfg.copy()
    gcfg.model.init_from = str(path)
    gcfg.optim.epochs_stage1 = 0  # no training: the warm-up's starting weights are saved as they are
    trainer = Trainer(gcfg, path.parent / "gf")
    trainer.run([1])
    model = trainer.model
    state = torch.load(path, weights_only=True)["model"]
    for enc in (model.global_encoder, model.local_encoder):
        for k, v in enc.state_dict().items():
            assert torch.equal(v, state[f"backbone.{k}"]), k


def test_init_from_refuses_another_backbone(baseline_ckpt):
    from gfnet.errors import CheckpointError
    from gfnet.train import Trainer

    path, cfg = baseline_ckpt
    gcfg = cfg.copy()
    gcfg.model.init_from = str(path)
    gcfg.model.width = 16  # the baseline was trained at width 8
    with pytest.raises(CheckpointError, match="width is 8, the model's 16"):
        Trainer(gcfg, path.parent / "gf2").run([1])
    assert not (path.parent / "gf2" / "stage1.pt").exists()  # refused before anything was written


def test_unfinished_baseline_is_refused(tmp_path, baseline_ckpt):
    from gfnet.errors import CheckpointError
    from gfnet.checkpoint import load_baseline_checkpoint, save_atomic

    ck = torch.load(baseline_ckpt[0], weights_only=True)
    ck.update(done=False, epoch=0)
    save_atomic(ck, tmp_path / "half.pt")
    with pytest.raises(CheckpointError, match="not finished"):
        load_baseline_checkpoint(tmp_path / "half.pt")


def test_resume_does_not_need_the_baseline_again(tmp_path, baseline_ckpt):
    """init_from is read once, when a warm-up starts fresh; a resumed run has its own weights."""
    import shutil

    from gfnet.train import Trainer

    path, cfg = baseline_ckpt
    copy = tmp_path / "base.pt"
    shutil.copy(path, copy)
    gcfg = cfg.copy()
    gcfg.model.init_from = str(copy)
    gcfg.optim.epochs_stage1 = gcfg.optim.epochs_stage2 = 0
    Trainer(gcfg, tmp_path / "gf").run([1])
    copy.unlink()
    Trainer(gcfg, tmp_path / "gf", resume=True).run([1, 2])
    assert torch.load(tmp_path / "gf" / "stage2.pt", weights_only=True)["done"]


def test_zoom_out_boxes_place_the_shrunk_image_inside_the_canvas():
    from gfnet.models.patches import zoom_out_boxes

    g = torch.Generator().manual_seed(0)
    boxes = zoom_out_boxes(500, (128, 96), 0.375, generator=g).double()
    s = 96 / (boxes[:, 2] - boxes[:, 0])  # the shrink factor, the same along both axes
    assert torch.allclose(s, 128 / (boxes[:, 3] - boxes[:, 1]), rtol=1e-6)
    assert float(s.min()) >= 0.375 - 1e-6 and float(s.max()) <= 1 + 1e-6 and float(s.min()) < 0.4
    ox, oy = -boxes[:, 0] * s, -boxes[:, 1] * s  # where the image's top-left lands on the canvas
    assert float(ox.min()) >= -1e-4 and bool((ox + 96 * s <= 96 + 1e-4).all())
    assert float(oy.min()) >= -1e-4 and bool((oy + 128 * s <= 128 + 1e-4).all())
    assert torch.equal(zoom_out_boxes(3, (128, 96), 1.0), torch.tensor([[0.0, 0.0, 96.0, 128.0]] * 3))


def test_zoom_out_patches_shrink_onto_an_empty_canvas():
    from gfnet.models.patches import zoom_out_patches
    from gfnet.models.static import normalise_images

    x = torch.zeros(64, 1, 128, 128, dtype=torch.uint8)
    x[:, :, 40:88, 40:88] = 200  # a 48 px square
    mean, std = torch.tensor([0.1]), torch.tensor([0.25])
    torch.manual_seed(0)
    same = zoom_out_patches(x, 1.0, mean=[0.1], std=[0.25])
    assert torch.allclose(same, normalise_images(x, mean, std), atol=1e-6)  # scale 1: the image itself
    z = zoom_out_patches(x, 0.375, mean=[0.1], std=[0.25])
    assert z.shape == (64, 1, 128, 128) and z.dtype == torch.float32
    lit = (z > 0).flatten(1).sum(1).double()  # the square's area shrinks with the square of the scale
    assert float(lit.min()) < 0.25 * 48 * 48 and float(lit.max()) <= 48 * 48 + 4 * 48
    assert float(z.min()) == pytest.approx(-0.4)  # the empty canvas: raw 0, normalised


def test_baseline_zoom_out_is_validated(tiny_cfg):
    from gfnet.errors import ConfigError

    with pytest.raises(ConfigError, match="data.baseline_zoom_out must be a fraction in"):
        tiny_cfg(**{"data.baseline_zoom_out": 1.5})
