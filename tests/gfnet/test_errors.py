"""Bad input gives one clear error line (exit code 2), no traceback, and never touches an
existing checkpoint."""

from __future__ import annotations

import hashlib

import pytest
import torch

from gfnet.cli import main
from gfnet import checkpoint as ckpt

from .conftest import tiny_overrides


def _run(capsys, *args):
    sets = []
    for s in tiny_overrides():
        sets += ["--set", s]
    rc = main(["train", *sets, *args])
    err = capsys.readouterr().err
    return rc, err


def _assert_clean_error(rc, err, *needles):
    assert rc == 2, err
    assert "Traceback" not in err
    assert "error:" in err
    for n in needles:
        assert n in err, err


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_unknown_preset(capsys, tmp_path):
    rc, err = _run(capsys, "--preset", "resnet51-p96", "--out", str(tmp_path / "o"))
    _assert_clean_error(rc, err, "unknown preset 'resnet51-p96'", "resnet50-p96")


def test_unknown_backbone(capsys, tmp_path):
    rc, err = _run(capsys, "--set", "model.backbone=resnet5000", "--out", str(tmp_path / "o"))
    _assert_clean_error(rc, err, "unknown backbone 'resnet5000'")


def test_image_smaller_than_patch(capsys, tmp_path):
    rc, err = _run(capsys, "--set", "model.image_size=24", "--out", str(tmp_path / "o"))
    _assert_clean_error(rc, err, "smaller than the patch size")


def test_missing_data_folder(capsys, tmp_path):
    rc, err = _run(capsys, "--preset", "mobilenet_v3_large-p96", "--data", str(tmp_path / "nothing"),
                   "--out", str(tmp_path / "o"))
    _assert_clean_error(rc, err, "does not exist")
    assert not (tmp_path / "o").exists()


def test_empty_data_folder(capsys, tmp_path):
    (tmp_path / "data" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "data" / "val").mkdir(parents=True)
    rc, err = _run(capsys, "--preset", "mobilenet_v3_large-p96", "--data", str(tmp_path / "data"),
                   "--out", str(tmp_path / "o"))
    _assert_clean_error(rc, err, "holds no images")


def test_cifar_not_downloaded(capsys, tmp_path):
    rc, err = _run(capsys, "--preset", "mobilenet_v3_large-p96", "--set", "data.dataset=cifar10",
                   "--set", "model.num_classes=10", "--data", str(tmp_path / "c"), "--out", str(tmp_path / "o"))
    _assert_clean_error(rc, err, "cifar10 not found", "data.download=true")


def test_bad_override_and_missing_out(capsys, tmp_path):
    rc, err = _run(capsys, "--set", "optim.batch_size=lots", "--out", str(tmp_path / "o"))
    _assert_clean_error(rc, err, "bad value 'lots'")
    rc, err = _run(capsys)
    _assert_clean_error(rc, err, "--out")


def test_stage2_without_stage1(capsys, tmp_path):
    rc, err = _run(capsys, "--stage", "2", "--out", str(tmp_path / "o"))
    _assert_clean_error(rc, err, "stage1.pt", "does not exist")


@pytest.mark.parametrize("resume", [False, True])
def test_corrupt_checkpoint_is_reported_and_kept(capsys, tmp_path, resume):
    out = tmp_path / "o"
    out.mkdir()
    bad = out / "stage1.pt"
    bad.write_bytes(b"\x80\x02 this is not a checkpoint" * 10)
    before = _digest(bad)
    rc, err = _run(capsys, "--out", str(out), *(["--resume"] if resume else []))
    _assert_clean_error(rc, err, "corrupt" if resume else "already holds checkpoints")
    assert _digest(bad) == before
    assert sorted(p.name for p in out.iterdir()) == ["stage1.pt"]


def test_mismatched_checkpoint_is_reported_and_kept(capsys, tmp_path):
    from gfnet.config import build_config

    out = tmp_path / "o"
    cfg = build_config("digits", overrides=tiny_overrides(**{"model.patch_size": 40}))
    ckpt.save_atomic({"format": ckpt.FORMAT, "stage": 1, "epoch": 1, "epochs": 2, "done": False,
                      "config": cfg.to_dict(), "model": {}, "rng": []}, out / "stage1.pt")
    before = _digest(out / "stage1.pt")
    rc, err = _run(capsys, "--out", str(out), "--resume")
    _assert_clean_error(rc, err, "does not match the model config", "patch_size")
    assert _digest(out / "stage1.pt") == before
    # a checkpoint that is not a gfnet one at all
    torch.save({"weights": torch.zeros(3)}, out / "stage1.pt")
    rc, err = _run(capsys, "--out", str(out), "--resume")
    _assert_clean_error(rc, err, "not a gfnet checkpoint")


def test_atomic_save_leaves_no_temp_files(tmp_path):
    ckpt.save_atomic({"format": ckpt.FORMAT, "x": torch.ones(2)}, tmp_path / "a.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]
    assert ckpt.load(tmp_path / "a.pt")["x"].sum() == 2


def test_list_presets(capsys):
    assert main(["train", "--list-presets"]) == 0
    out = capsys.readouterr().out
    assert "digits" in out and "efficientnet_b3-p144" in out


def test_stages_one_at_a_time(capsys, tmp_path):
    out = str(tmp_path / "o")
    for stage in ("1", "2", "3"):
        rc, err = _run(capsys, "--stage", stage, "--out", out, "--epochs", "1",
                       "--set", "run.max_train_batches=1")
        assert rc == 0, err
    assert main(["train", "--stage", "2", "--out", out]) == 2  # would overwrite stage2.pt
    assert "already holds checkpoints (stage2.pt)" in capsys.readouterr().err
