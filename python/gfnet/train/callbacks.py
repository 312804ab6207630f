"""Callbacks: how a caller joins a training run without changing the Trainer.

A callback is any object with some of the methods of :class:`TrainerCallback` (subclass it and
override what you need); pass a list of them to ``Trainer(..., callbacks=...)``,
``gfnet.train.train`` or ``gfnet.train.baseline.train_baseline``. Every rank calls them, at the
same points, after the collectives of that point, so a callback may read the model, the
checkpoint on disk or ``trainer.dist`` (rank, world size) but must not start a collective of its
own unless every rank does.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .trainer import Trainer


class TrainerCallback:
    def on_checkpoint_saved(self, trainer: Trainer, stage: int, epoch: int, path: Path) -> None:
        """The checkpoint of ``stage`` holding its first ``epoch`` epochs is on disk at ``path``,
        complete and renamed into place: a run stopped here resumes from it."""

    def on_run_end(self, trainer: Trainer, results: dict[str, Any]) -> None:
        """``Trainer.run`` finished every stage asked for; ``results`` is what it returns (test
        accuracy per step of each stage) and ``trainer.model`` holds the final weights."""
