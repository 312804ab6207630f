"""Test-only entry point: ``gfnet train`` with test callbacks installed through the Trainer's
callback interface (gfnet.train.TrainerCallback), for the subprocess tests of test_resume_ddp.py.

    python tests/gfnet/train_with_callbacks.py [--kill-after STAGE:EPOCH] [--dump-params DIR] \\
        <gfnet train arguments>

It runs alone or under torchrun (every rank installs the same callbacks). The rest of the
command line goes through ``gfnet train``'s own parser and command (``gfnet.cli._train``, given
the callbacks), so a run here is the same ``python -m gfnet train`` command line would be.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import torch

from gfnet import cli
from gfnet.cli import build_parser
from gfnet.errors import GFNetError
from gfnet.train import TrainerCallback
from gfnet.train.baseline import BASELINE_STAGE


class KillAfterEpoch(TrainerCallback):
    """SIGKILL this process as soon as the checkpoint of (stage, epoch) is on disk: what the OOM
    killer or a pre-empted job does (no clean-up, no Python exit handlers)."""

    def __init__(self, stage: int, epoch: int):
        self.stage, self.epoch = stage, epoch

    def on_checkpoint_saved(self, trainer, stage, epoch, path):
        if (stage, epoch) == (self.stage, self.epoch):
            os.kill(os.getpid(), signal.SIGKILL)


class DumpParams(TrainerCallback):
    """Every rank saves its final model state to DIR/rank{r}.pt, so a test can compare ranks."""

    def __init__(self, folder: str):
        self.folder = Path(folder)

    def on_run_end(self, trainer, results):
        self.folder.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu() for k, v in trainer.model.state_dict().items()},
                   self.folder / f"rank{trainer.dist.rank}.pt")


def _stage_epoch(text: str) -> tuple[int, int]:
    stage, _, epoch = text.partition(":")
    return int(stage), int(epoch)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--kill-after", type=_stage_epoch, metavar="STAGE:EPOCH",
                   help=f"SIGKILL after this checkpoint (the static baseline is stage {BASELINE_STAGE})")
    p.add_argument("--dump-params", metavar="DIR", help="each rank's final parameters to DIR/rank{r}.pt")
    ours, rest = p.parse_known_args(argv)
    callbacks: list[TrainerCallback] = []
    if ours.kill_after:
        callbacks.append(KillAfterEpoch(*ours.kill_after))
    if ours.dump_params:
        callbacks.append(DumpParams(ours.dump_params))
    args = build_parser().parse_args(["train", *rest])
    try:
        return cli._train(args, callbacks=callbacks)
    except GFNetError as e:
        print(f"train_with_callbacks: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
