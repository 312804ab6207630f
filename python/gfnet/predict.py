"""Classifying image files with a trained run: what ``gfnet predict`` does, callable from Python.

    result = predict_files("runs/digits", ["a.png", "b.png"], budget=5, out="predict")

Each image runs through the dynamic engine with the exit thresholds of a budget (stored in the
checkpoint by an evaluation), explicit thresholds, or none (every image runs all steps); a
picture of its glance and focus patches is written per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .budget import budget_q, stored_calibration
from .checkpoint import load_checkpoint_model, resolve_checkpoint
from .data import read_image
from .device import pick_device, set_threads
from .errors import CheckpointError, GFNetError

DEFAULT_BUDGET = 20  # the middle of 1 .. 39, used when the checkpoint is calibrated


def choose_thresholds(ck: dict[str, Any], ck_path: Path, steps: int, budget: int | None = None,
                      thresholds: Sequence[float] | None = None) -> tuple[list[float] | None, str]:
    """(exit thresholds of steps 1 .. T-1 or None for all steps, where they come from)."""
    if budget is not None:
        budget_q(budget)  # BudgetError: out of range
    if thresholds is not None:
        thr = [float(t) for t in thresholds]
        if len(thr) != steps - 1:
            raise GFNetError(f"--thresholds needs {steps - 1} values (steps 1..{steps - 1}), got {len(thr)}")
        return thr, "given"
    cal = stored_calibration(ck)
    if cal is None:
        if budget is not None:
            raise CheckpointError(f"checkpoint {str(ck_path)!r} has no thresholds: run `gfnet eval` first")
        return None, "none (all steps)"
    b = budget if budget is not None else DEFAULT_BUDGET
    return cal.point(b).thresholds, f"budget {b}"


def predict_files(checkpoint: str | Path, images: Sequence[str], *, budget: int | None = None,
                  thresholds: Sequence[float] | None = None, out: str | Path = "predict",
                  device: str | None = None) -> dict[str, Any]:
    """Classify image files (any format PIL reads) with the checkpoint (file or run folder).

    Returns ``{"thresholds": where they come from, "steps": T, "predictions": [...]}`` with a
    row per image: image, prediction, confidence, exit_step (1 .. T), boxes looked at, picture
    (the PNG of its glance and patches, in ``out``).
    """
    ck_path = resolve_checkpoint(checkpoint)
    dev = pick_device(device)
    model, cfg, ck = load_checkpoint_model(ck_path, dev)
    set_threads(cfg.run.threads)
    m = cfg.model
    thr, source = choose_thresholds(ck, ck_path, m.max_steps, budget, thresholds)
    batch = torch.stack([read_image(p, m.in_channels, m.image_size) for p in images])
    from .viz import predict_pictures

    rows = predict_pictures(model, batch.to(dev), list(images), thr, Path(out))
    return {"thresholds": source, "steps": m.max_steps, "predictions": rows}


__all__ = ["choose_thresholds", "predict_files"]
