"""Training the static baseline through the GFNet trainer's loop (DDP, cosine schedule,
progress bars, atomic per-epoch checkpoints, exact resume).

The baseline is the config's backbone with its own head on the full-resolution image, trained
with the recipe of GFNet's encoders: as many epochs as they train (``optim.epochs_stage1 +
optim.epochs_stage3``, warm-up and fine-tune) under one cosine schedule, and the same batch
size, SGD settings, backbone learning rate and weight decay.
It writes ``OUT/baseline.pt`` (``kind: "baseline"``; once finished it holds ``test_accuracy``
and ``macs``, what ``gfnet eval --baseline`` and ``gfnet report`` read) and adds a ``baseline``
entry to ``OUT/results.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from ..errors import CheckpointError
from ..models.static import StaticBaseline, build_static_baseline
from . import checkpoint as ckpt
from .distributed import setup, teardown
from .trainer import Trainer

BASELINE_STAGE = 0  # the trainer's stage number for the baseline's single stage
BASELINE_FILE = "baseline.pt"


class _BaselineStage(nn.Module):
    """forward(images, labels) -> (cross-entropy, [logits]): the module DDP wraps."""

    def __init__(self, model: StaticBaseline):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, labels: torch.Tensor):
        logits = self.model(images)
        return F.cross_entropy(logits.float(), labels), [logits.detach()]


class BaselineTrainer(Trainer):
    stages = (BASELINE_STAGE,)
    checkpoint_kind = "baseline"

    def build_model(self) -> nn.Module:
        return build_static_baseline(self.cfg.model)

    def stage_path(self, stage: int) -> Path:
        return self.out / BASELINE_FILE

    def stage_label(self, stage: int) -> str:
        return "baseline"

    def stage_epochs(self, stage: int) -> int:
        # as many epochs as GFNet's encoders train: the warm-up's and the fine-tune's
        return self.cfg.optim.epochs_stage1 + self.cfg.optim.epochs_stage3

    def set_trainable(self, stage: int) -> None:
        self.model.train()
        for p in self.model.parameters():
            p.requires_grad_(True)

    def stage_runner(self, stage: int) -> nn.Module:
        return _BaselineStage(self.model)

    def find_unused_parameters(self, stage: int) -> bool:
        return False

    def num_outputs(self) -> int:
        return 1

    def _optimizer(self, stage: int):
        o = self.cfg.optim
        return torch.optim.SGD([{"params": list(self.model.parameters()), "lr": o.lr_backbone, "name": "backbone"}],
                               lr=o.lr_backbone, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0,
                               weight_decay=o.weight_decay)

    # evaluation: Trainer.evaluate's loop, one output ("static") instead of GFNet's focus modes
    def val_modes(self, stage: int) -> tuple[str, ...]:
        return ("static",)

    def test_modes(self) -> tuple[str, ...]:
        return ("static",)

    def eval_logits(self, images: torch.Tensor, mode: str, generator: torch.Generator | None):
        return [self.model(images)]

    def final_extras(self, stage: int, test: dict[str, Any]) -> dict[str, Any]:
        from ..flops import static_macs

        macs = static_macs(self.model.backbone, self.cfg.model)
        return {"test": test, "test_accuracy": test["static"][0], "macs": macs}


def train_baseline(cfg: Config, out_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train (or finish, with resume) the static baseline; returns its finished checkpoint."""
    info = setup(cfg.run.device)
    try:
        BaselineTrainer(cfg, out_dir, resume=resume, dist_info=info).run([BASELINE_STAGE])
    finally:
        teardown(info)
    return load_baseline_checkpoint(Path(out_dir) / BASELINE_FILE)


def load_baseline_checkpoint(path: str | Path) -> dict[str, Any]:
    """A finished baseline checkpoint, or a CheckpointError saying what it is instead."""
    ck = ckpt.load(path)
    if ck.get("kind") != "baseline":
        raise CheckpointError(f"{str(path)!r} is not a baseline checkpoint (gfnet train --baseline)")
    if not ck.get("done"):
        raise CheckpointError(f"baseline checkpoint {str(path)!r} is not finished (epoch {ck.get('epoch')}/"
                              f"{ck.get('epochs')}); run gfnet train --baseline --resume")
    return ck


def load_baseline_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[StaticBaseline, Config, dict]:
    """(model in eval mode on ``device``, config, checkpoint) of a finished baseline checkpoint."""
    ck = load_baseline_checkpoint(path)
    cfg = Config.from_dict(ck["config"]).validate()
    model = build_static_baseline(cfg.model)
    ckpt.load_model_state(model, ck["model"], path)
    return model.to(device).eval(), cfg, ck


def init_encoders_from_baseline(model, path: str | Path) -> None:
    """Both encoders of a GFNet ``model`` start from a finished static baseline's backbone (with
    its head), as the paper's start from ImageNet-trained weights: GFNet then builds on the
    network a user already has. Checked against the model's backbone config."""
    ck = load_baseline_checkpoint(path)
    saved = ck.get("config", {}).get("model", {})
    mine = model.cfg
    for key in ("backbone", "width", "in_channels", "num_classes"):
        if saved.get(key) != getattr(mine, key):
            raise CheckpointError(f"model.init_from {str(path)!r}: its {key} is {saved.get(key)!r}, "
                                  f"the model's {getattr(mine, key)!r}")
    prefix = "backbone."
    state = {k[len(prefix):]: v for k, v in ck["model"].items() if k.startswith(prefix)}
    for encoder in (model.global_encoder, model.local_encoder):
        ckpt.load_model_state(encoder, state, path)

