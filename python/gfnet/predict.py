"""Classifying image files with a trained run: what ``gfnet predict`` does, callable from Python.

    result = predict_files("runs/digits", ["a.png", "b.png"], budget=5, out="predict")

The images go through the predictor (``gfnet.load``, ``gfnet/predictor.py``): the dynamic
engine with the exit thresholds of a budget (stored in the checkpoint by an evaluation),
explicit thresholds, a target average MACs, or none (every image runs all steps); a picture of
its glance and focus patches is written per image.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .device import set_threads
from .files import OutputFolder
from .predictor import DEFAULT_BATCH_SIZE, load


def predict_files(checkpoint: str | Path, images: Sequence[str], *, budget: int | None = None,
                  thresholds: Sequence[float] | None = None, target_macs: float | None = None,
                  out: str | Path = "predict", device: str | None = None,
                  class_names: str | Path | Sequence[str] | None = None,
                  batch_size: int = DEFAULT_BATCH_SIZE, resize: bool = True,
                  force: bool = False) -> dict[str, Any]:
    """Classify image files (any format PIL reads) with the checkpoint (file or run folder).

    Returns ``{"thresholds": where they come from, "steps": T, "predictions": [...]}`` with a
    row per image: image, prediction (class index), class_name, confidence, exit_step (1 .. T),
    boxes looked at (in the image file's pixels), macs (None without fvcore), picture (the PNG of the model's input
    with its glance and patches, in ``out``). class_names: a names file (or list) for a
    checkpoint without names. The pictures are written as ``gfnet.files.OutputFolder`` writes:
    only inside ``out``, atomically, never through a symbolic link, never over a file a
    prediction did not write unless ``force=True``; every name is checked before any work.
    """
    from .viz import prediction_picture, prediction_picture_name

    images = list(images)
    folder = OutputFolder(out, force=force, command="gfnet predict")
    names = [prediction_picture_name(i, str(name)) for i, name in enumerate(images)]
    for name in names:
        folder.target(name)  # refuse before the work, not after it
    predictor = load(checkpoint, device, class_names=class_names)
    set_threads(predictor.cfg.run.threads)
    result = predictor(images, budget=budget, threshold=thresholds, target_macs=target_macs,
                       batch_size=batch_size, resize=resize, keep_inputs=True)
    rows = []
    for i, p in enumerate(result):
        png = io.BytesIO()
        prediction_picture(png, i, p.input, p.model_input.cpu(), torch.tensor(p.model_boxes),
                           predictor.cfg.model, exit_step=p.exit_step,
                           label=f"{p.class_name} ({p.confidence:.2f}), exit at step {p.exit_step}")
        pic = folder.write(names[i], png.getbuffer())
        rows.append({"image": p.input, "prediction": p.class_index, "class_name": p.class_name,
                     "confidence": p.confidence, "exit_step": p.exit_step,
                     "boxes": [list(b) for b in p.boxes], "macs": p.macs, "picture": str(pic)})
    return {"thresholds": result.exit_rule.source, "steps": predictor.steps, "predictions": rows}


__all__ = ["predict_files"]
