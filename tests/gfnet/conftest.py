"""Fixtures for the gfnet tests: tiny configs, source-tree imports, one CPU thread."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
for p in (REPO / "python", REPO):  # source tree without an install
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

torch.set_num_threads(1)


def subprocess_env() -> dict[str, str]:
    """Environment for `python -m gfnet` / torchrun children: the source tree on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "python"), str(REPO), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


TINY = [
    "run.threads=1", "run.progress=false", "run.max_eval_batches=0",
    "data.train_samples=16", "data.val_samples=8", "data.test_samples=8",
    "optim.batch_size=8", "model.width=8", "model.classifier_hidden=16",
    "model.policy_hidden=16", "model.policy_conv_channels=4",
]


def tiny_overrides(**extra) -> list[str]:
    return TINY + [f"{k}={v}" for k, v in extra.items()]


@pytest.fixture
def tiny_cfg():
    from gfnet.config import build_config

    def make(**extra):
        return build_config("digits", overrides=tiny_overrides(**extra))

    return make


def make_image_folder(root: Path, *, classes=("cat", "dog"), splits=("train", "val"), per_split=None,
                      size=lambda i: (70, 90), ext="png", seed=0) -> Path:
    """A random-pixel ImageFolder in the ImageNet layout: root/<split>/<class>/<i>.<ext> with
    ``per_split[split]`` (default 3) RGB images per class, image i of size ``size(i)`` (H, W)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in splits:
        for cls in classes:
            d = Path(root) / split / cls
            d.mkdir(parents=True)
            for i in range((per_split or {}).get(split, 3)):
                Image.fromarray(rng.integers(0, 255, (*size(i), 3), dtype=np.uint8)).save(d / f"{i}.{ext}")
    return Path(root)


def save_gfnet_checkpoint(path: Path, cfg, model, **extra) -> Path:
    """A gfnet checkpoint file of ``model`` trained under ``cfg`` (a Config, or a config dict
    as a checkpoint holds it), as training writes one; ``extra``: more keys (stage, done,
    exit_thresholds, class_names, ...)."""
    from gfnet.checkpoint import FORMAT, save_atomic

    config = cfg if isinstance(cfg, dict) else cfg.to_dict()
    save_atomic({"format": FORMAT, "kind": "gfnet", "config": config, "model": model.state_dict(), **extra}, path)
    return Path(path)
