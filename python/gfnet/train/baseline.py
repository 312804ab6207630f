"""Training the static baseline through the GFNet trainer's loop (DDP, cosine schedule,
progress bars, atomic per-epoch checkpoints, exact resume).

The baseline is the config's backbone with its own head on the full-resolution image, trained
with the recipe of GFNet's encoders: by default as many epochs as they train
(``optim.epochs_stage1 + optim.epochs_stage3``, warm-up and fine-tune; ``optim.epochs_baseline``
sets another number) under one cosine schedule, and the same batch size, SGD settings, backbone
learning rate and weight decay.
It writes ``OUT/baseline.pt`` (``kind: "baseline"``; once finished it holds ``test_accuracy``
and ``macs``, what ``gfnet eval --baseline`` and ``gfnet report`` read) and adds a ``baseline``
entry to ``OUT/results.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import load_baseline_checkpoint
from ..config import Config
from ..models.static import StaticBaseline, build_static_baseline
from ..run_config import run_config_path
from .callbacks import TrainerCallback
from .distributed import setup, teardown
from .stages import ClassifierStage
from .trainer import Trainer

BASELINE_STAGE = 0  # the trainer's stage number for the baseline's single stage
BASELINE_FILE = "baseline.pt"


def baseline_epochs(cfg: Config) -> int:
    """The static baseline's epochs: ``optim.epochs_baseline``, or when 0 as many as GFNet's
    encoders train (the warm-up's and the fine-tune's)."""
    o = cfg.optim
    return o.epochs_baseline or o.epochs_stage1 + o.epochs_stage3


class _BaselineLoss(nn.Module):
    """forward(images, labels) -> (cross-entropy, [logits]): the module DDP wraps."""

    def __init__(self, model: StaticBaseline):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, labels: torch.Tensor):
        logits = self.model(images)
        return F.cross_entropy(logits.float(), labels), [logits.detach()]


class BaselineStage(ClassifierStage):
    """The static baseline's one stage: the whole model, SGD at the backbone's learning rate."""

    number, label, title = BASELINE_STAGE, "baseline", "baseline"
    val_modes = ("static",)

    def checkpoint_path(self, out: Path) -> Path:
        return out / BASELINE_FILE

    def epochs(self, cfg: Config) -> int:
        return baseline_epochs(cfg)

    def set_trainable(self, trainer):
        trainer.model.train()
        for p in trainer.model.parameters():
            p.requires_grad_(True)

    def runner(self, trainer):
        return _BaselineLoss(trainer.model)

    def optimizer(self, trainer):
        lr = trainer.cfg.optim.lr_backbone
        return self.sgd(trainer.cfg, [{"params": list(trainer.model.parameters()), "lr": lr, "name": "backbone"}], lr)


class BaselineTrainer(Trainer):
    checkpoint_kind = "baseline"

    def stage_kinds_for(self, cfg: Config) -> tuple[BaselineStage]:
        return (BaselineStage(),)

    def build_model(self) -> nn.Module:
        return build_static_baseline(self.cfg.model)

    def writes_run_config(self) -> bool:
        # the run's config is GFNet's: the baseline records it only in a folder without one
        # (trained first, as gfnet demo does), or when told to go on with other settings
        return self.force or not run_config_path(self.out).is_file()

    def warm_starts(self) -> bool:
        return False  # the static baseline starts from torchvision's weights or fresh, never init_from

    def num_outputs(self) -> int:
        return 1

    # evaluation: Trainer.evaluate's loop, one output ("static") instead of GFNet's focus modes
    def test_modes(self) -> tuple[str, ...]:
        return ("static",)

    def eval_logits(self, images: torch.Tensor, mode: str, generator: torch.Generator | None):
        return [self.model(images)]

    def final_extras(self, stage: int, test: dict[str, Any]) -> dict[str, Any]:
        from ..flops import static_macs

        macs = static_macs(self.model.backbone, self.cfg.model)
        return {"test": test, "test_accuracy": test["static"][0], "macs": macs}


def train_baseline(cfg: Config, out_dir: str | Path, resume: bool = False,
                   callbacks: Sequence[TrainerCallback] = (), force: bool = False
                   ) -> dict[str, Any]:
    """Train (or finish, with resume) the static baseline; returns its finished checkpoint.
    A config that differs from the run's config.yaml is refused unless ``force``."""
    from ..flops import require_fvcore

    require_fvcore("training the static baseline (its checkpoint stores its MACs)")  # not after training
    info = setup(cfg.run.device)
    try:
        BaselineTrainer(cfg, out_dir, resume=resume, dist_info=info, callbacks=callbacks,
                        force=force).run([BASELINE_STAGE])
    finally:
        teardown(info)
    return load_baseline_checkpoint(Path(out_dir) / BASELINE_FILE)
