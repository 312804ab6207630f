"""One optimisation step of each stage trains exactly that stage's parameters."""

from __future__ import annotations

import pytest
import torch

from gfnet.train import Trainer, trained_parts

PARTS = ("global_encoder", "local_encoder", "classifier", "policy")


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(before, model, prefix):
    after = model.state_dict()
    keys = [k for k in before if k.startswith(prefix + ".")]
    params = dict(model.named_parameters())
    changed = {k for k in keys if not torch.equal(before[k], after[k])}
    return keys, changed, params


@pytest.mark.parametrize("freeze_global", [False, True])
def test_each_stage_changes_exactly_its_parameters(tiny_cfg, tmp_path, freeze_global):
    cfg = tiny_cfg(**{"run.max_train_batches": 1, "optim.epochs_stage1": 1, "optim.epochs_stage2": 1,
                      "optim.epochs_stage3": 1, "optim.freeze_global_stage1": freeze_global})
    trainer = Trainer(cfg, tmp_path / "run")
    (tmp_path / "run").mkdir()
    model = trainer.model
    for stage in (1, 2, 3):
        trains = set(trained_parts(cfg, stage))
        before = _snapshot(model)
        trainer.train_stage(stage, None)
        for part in PARTS:
            keys, changed, params = _changed(before, model, part)
            if part in trains:
                # every parameter tensor of a trained part moved (buffers may or may not)
                moved = {k for k in keys if k in params and k in changed}
                assert moved == {k for k in keys if k in params}, (stage, part, set(keys) - moved)
            else:  # frozen: parameters *and* buffers (BN running stats) bit-identical
                assert not changed, (stage, part, sorted(changed)[:5])
        assert (tmp_path / "run" / f"stage{stage}.pt").exists()
    assert ("global_encoder" in trained_parts(cfg, 1)) is (not freeze_global)


def test_callbacks_see_every_checkpoint_on_disk_and_the_end(tiny_cfg, tmp_path):
    from gfnet.train import TrainerCallback

    class Record(TrainerCallback):
        def __init__(self):
            self.saved, self.ended = [], None

        def on_checkpoint_saved(self, trainer, stage, epoch, path):
            ck = torch.load(path, weights_only=True)  # complete and in place when called
            self.saved.append((stage, epoch, ck["epoch"], ck["done"]))

        def on_run_end(self, trainer, results):
            self.ended = sorted(results)

    cfg = tiny_cfg(**{"run.max_train_batches": 1, "optim.epochs_stage1": 2, "optim.epochs_stage2": 1,
                      "optim.epochs_stage3": 0})
    rec = Record()
    Trainer(cfg, tmp_path / "run", callbacks=[rec]).run([1, 2, 3])
    assert rec.saved == [(1, 1, 1, False), (1, 2, 2, True), (2, 1, 1, True), (3, 0, 0, True)]
    assert rec.ended == ["stage1", "stage2", "stage3"]
