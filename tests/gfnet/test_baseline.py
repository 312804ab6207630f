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


def test_baseline_epochs_follow_gfnet_unless_set(tmp_path):
    """optim.epochs_baseline: 0 trains as many epochs as GFNet's encoders (stage 1 + stage 3),
    any other number exactly that many; --epochs N gives every stage N and the baseline 2N."""
    from gfnet.cli import _run_shortcuts, build_parser, config_from_args
    from gfnet.config import build_config
    from gfnet.errors import ConfigError
    from gfnet.train.baseline import baseline_epochs, train_baseline

    cfg = build_config("digits", overrides=tiny_overrides(**{"optim.epochs_stage1": 2, "optim.epochs_stage3": 1}))
    assert baseline_epochs(cfg) == 3
    cfg.optim.epochs_baseline = 1
    assert baseline_epochs(cfg) == 1
    ck = train_baseline(cfg, tmp_path)
    assert ck["done"] and ck["epochs"] == 1
    with pytest.raises(ConfigError, match=r"optim\.epochs_baseline must be >= 0"):
        build_config("digits", overrides=["optim.epochs_baseline=-1"])
    args = build_parser().parse_args(["demo", "--epochs", "4"])
    short = config_from_args(args, _run_shortcuts(args))
    assert short.optim.epochs_stage1 == short.optim.epochs_stage3 == 4 and baseline_epochs(short) == 8
