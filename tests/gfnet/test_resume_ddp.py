"""Subprocess tests: exact resume after a kill, and torchrun data parallelism on CPU (gloo).

The kill and the per-rank parameter dump are test callbacks of the Trainer, installed by the
test-only entry point train_with_callbacks.py (run alone or under torchrun); the runs they are
compared with, and the resumed runs, are plain ``python -m gfnet train``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .conftest import subprocess_env, tiny_overrides

WITH_CALLBACKS = str(Path(__file__).with_name("train_with_callbacks.py"))
TORCHRUN_2 = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]


def _sets(**extra) -> list[str]:
    args = []
    for s in tiny_overrides(**extra):
        args += ["--set", s]
    return args


def _train(out, *extra_args, callbacks=(), launcher=(sys.executable,), **sets):
    """`gfnet train --preset digits --out OUT` with the tiny overrides; with ``callbacks``
    (options of train_with_callbacks.py) through that entry point instead of -m gfnet."""
    entry = [WITH_CALLBACKS, *callbacks] if callbacks else ["-m", "gfnet", "train"]
    cmd = [*launcher, *entry, "--preset", "digits", "--out", str(out), *_sets(**sets), *extra_args]
    return subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)


def _model(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    sets = {"optim.epochs_stage1": 2, "optim.epochs_stage2": 2, "optim.epochs_stage3": 2,
            "run.deterministic": "true", "data.train_samples": 24}
    ref = _train(tmp_path / "ref", **sets)
    assert ref.returncode == 0, ref.stderr
    # killed (SIGKILL, as by the OOM killer or a pre-empted job) after stage 2, epoch 1
    killed = _train(tmp_path / "run", callbacks=["--kill-after", "2:1"], **sets)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "run" / "stage3.pt").exists()
    ck = torch.load(tmp_path / "run" / "stage2.pt", weights_only=True)
    assert ck["epoch"] == 1 and not ck["done"]
    # --resume continues where it stopped (a plain rerun refusing is in test_errors.py)
    resumed = _train(tmp_path / "run", "--resume", **sets)
    assert resumed.returncode == 0, resumed.stderr
    assert "stage 1: already complete" in resumed.stderr
    assert "resuming after epoch 1/2" in resumed.stderr
    a, b = _model(tmp_path / "ref" / "stage3.pt"), _model(tmp_path / "run" / "stage3.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6  # 2 epochs x 3 stages, none repeated


@pytest.mark.parametrize("policy_training,stages", [("ppo", (1, 2, 3)), ("differentiable", (1, 3)),
                                                    ("mixture", (1, 2, 3))])
def test_torchrun_two_ranks_identical_parameters(tmp_path, policy_training, stages):
    """Every recipe: PPO's stage 2, the differentiable stage 3 that trains the policy through
    the crop, and the mixture's stage 2 with its training-only scorers (the critic unused in
    both: DDP's find_unused_parameters)."""
    proc = _train(tmp_path / "ddp", callbacks=["--dump-params", str(tmp_path / "dump")], launcher=TORCHRUN_2,
                  **{"optim.epochs_stage1": 1, "optim.epochs_stage2": 1, "optim.epochs_stage3": 1,
                     "optim.mixture_epochs": 1, "optim.policy_training": policy_training,
                     "data.train_samples": 32,
                     "run.max_train_batches": 2})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "dump" / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "dump" / "rank1.pt", weights_only=True)
    init = _model(tmp_path / "ddp" / "stage1.pt")
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    assert [s for s in (1, 2, 3) if (tmp_path / "ddp" / f"stage{s}.pt").exists()] == list(stages)
    assert any(not torch.equal(r0[k], init[k]) for k in r0 if k.startswith("policy.actor."))


def test_baseline_resume_after_kill_matches_uninterrupted_run(tmp_path):
    """The static baseline trains through the same loop: killed after epoch 1, --resume
    finishes with exactly the parameters of an uninterrupted run, and its results sit beside
    GFNet's stages in results.json."""
    # the baseline trains as long as GFNet's encoders: stage-1 + stage-3 epochs
    sets = {"optim.epochs_stage1": 1, "optim.epochs_stage3": 1, "run.deterministic": "true",
            "data.train_samples": 24}
    ref = _train(tmp_path / "ref", "--baseline", **sets)
    assert ref.returncode == 0, ref.stderr
    assert "static baseline (digitnet, 128 px): test accuracy" in ref.stdout
    killed = _train(tmp_path / "run", "--baseline", callbacks=["--kill-after", "0:1"],  # the baseline: stage 0
                    **sets)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    ck = torch.load(tmp_path / "run" / "baseline.pt", weights_only=True)
    assert ck["kind"] == "baseline" and ck["epoch"] == 1 and not ck["done"] and "test_accuracy" not in ck
    resumed = _train(tmp_path / "run", "--baseline", "--resume", **sets)
    assert resumed.returncode == 0, resumed.stderr
    assert "baseline: resuming after epoch 1/2" in resumed.stderr
    a, b = _model(tmp_path / "ref" / "baseline.pt"), _model(tmp_path / "run" / "baseline.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    done = torch.load(tmp_path / "run" / "baseline.pt", weights_only=True)
    assert done["done"] and 0.0 <= done["test_accuracy"] <= 1.0 and done["macs"] > 0
    again = _train(tmp_path / "run", "--baseline", "--resume", **sets)
    assert again.returncode == 0 and "baseline: already complete" in again.stderr


def test_baseline_torchrun_two_ranks(tmp_path):
    proc = _train(tmp_path / "ddp", "--baseline", callbacks=["--dump-params", str(tmp_path / "dump")],
                  launcher=TORCHRUN_2, **{"optim.epochs_stage1": 1, "optim.epochs_stage3": 0,
                                          "data.train_samples": 32, "run.max_train_batches": 2})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "dump" / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "dump" / "rank1.pt", weights_only=True)
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)
    assert torch.load(tmp_path / "ddp" / "baseline.pt", weights_only=True)["done"]
