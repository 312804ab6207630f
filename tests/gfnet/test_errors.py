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


# ---------------------------------------------------------------------- checkpoints (issue 21)
def _tiny_checkpoint(path, **extra):
    from gfnet.config import build_config
    from gfnet.models import build_model

    from .conftest import save_gfnet_checkpoint

    cfg = build_config("digits", overrides=tiny_overrides())
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    return save_gfnet_checkpoint(path, cfg, model, stage=3, done=True, **extra), model


def test_flipped_bytes_in_the_weights_are_a_checkpoint_error(tmp_path):
    """One byte of one weight changed on disk: the file still unpickles, but load refuses it
    (and so do gfnet.load and gfnet eval, which load through it)."""
    import gfnet
    from gfnet.errors import CheckpointError

    path, model = _tiny_checkpoint(tmp_path / "stage3.pt")
    assert ckpt.HASH_KEY in ckpt.load(path)
    weight = max(model.state_dict().values(), key=lambda t: t.numel())  # unique bytes in the file
    raw = weight.contiguous().numpy().tobytes()
    data = bytearray(path.read_bytes())
    at = data.find(raw)
    assert at >= 0
    data[at + len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    torch.load(path, weights_only=True)  # torch itself notices nothing
    with pytest.raises(CheckpointError, match="is corrupt: its contents do not match the sha256"):
        ckpt.load(path)
    with pytest.raises(CheckpointError, match="is corrupt"):
        gfnet.load(path, device="cpu")


def test_a_checkpoint_without_a_hash_loads_with_a_warning(tmp_path):
    path, _ = _tiny_checkpoint(tmp_path / "stage3.pt")
    ck = torch.load(path, weights_only=True)
    del ck[ckpt.HASH_KEY]
    torch.save(ck, tmp_path / "old.pt")  # as gfnet wrote them before the hash
    with pytest.warns(ckpt.UncheckedCheckpointWarning, match="has no content hash"):
        old = ckpt.load(tmp_path / "old.pt")
    key = next(iter(ck["model"]))
    assert torch.equal(old["model"][key], ck["model"][key])
    ckpt.save_atomic(old, tmp_path / "old.pt")  # saving it again adds the hash
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ckpt.HASH_KEY in ckpt.load(tmp_path / "old.pt")


class PickledPayload:
    """An object torch.load(weights_only=True) refuses to unpickle."""


def test_a_pickled_object_checkpoint_gets_our_advice(tmp_path):
    """A file holding pickled Python objects: refused with our advice, not torch's suggestion to
    retry with weights_only=False (which would run code from the file)."""
    from gfnet.errors import CheckpointError

    path = tmp_path / "pickled.pt"
    torch.save({"format": ckpt.FORMAT, "odd": PickledPayload()}, path)
    with pytest.raises(CheckpointError) as info:
        ckpt.load(path)
    text = str(info.value)
    assert "pickled Python objects" in text and "PickledPayload" in text and "import-official" in text
    assert "weights_only" not in text


def test_a_full_disk_while_saving_a_checkpoint_is_a_clear_error(tmp_path, monkeypatch):
    """ENOSPC while writing: a CheckpointError saying so and naming the file, the old checkpoint
    intact, no temporary file left."""
    import errno

    import gfnet.files
    from gfnet.errors import CheckpointError

    path, _ = _tiny_checkpoint(tmp_path / "stage3.pt")
    before = _digest(path)

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gfnet.files.os, "write", full)
    with pytest.raises(CheckpointError, match=r"no space left on device writing '.*stage3\.pt'"):
        ckpt.save_atomic(ckpt.load(path), path)
    assert _digest(path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["stage3.pt"]


class _Killed(BaseException):
    """Stands for kill -9 in the middle of a checkpoint write."""


def test_resume_after_a_kill_during_a_checkpoint_write_leaves_no_traces(capsys, tmp_path, monkeypatch):
    """A kill while epoch 2's checkpoint is written (its metrics row already out, a temporary
    file half written): the resumed run writes epoch 2's row once and removes the temporary file."""
    import json

    out = tmp_path / "o"
    real_save = ckpt.save_atomic

    def killed_at_epoch_2(obj, path):
        if obj.get("epoch") == 2:
            (path.parent / f".{path.name}.k1ll3d.tmp").write_bytes(b"PK\x03\x04 half a checkpoint")
            raise _Killed()
        real_save(obj, path)

    args = ("--stage", "1", "--out", str(out), "--epochs", "3", "--set", "run.max_train_batches=1")
    monkeypatch.setattr(ckpt, "save_atomic", killed_at_epoch_2)
    with pytest.raises(_Killed):
        _run(capsys, *args)
    monkeypatch.setattr(ckpt, "save_atomic", real_save)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r.get("stage") == 1] == [1, 2]  # the trace this test is about
    rc, err = _run(capsys, *args, "--resume")
    assert rc == 0, err
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r.get("stage") == 1] == [1, 2, 3]
    assert not list(out.glob(".*.tmp"))
