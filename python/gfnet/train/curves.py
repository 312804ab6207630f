"""Training curves: the per-epoch rows of ``RUN/metrics.jsonl`` read back, and what they warn of.

Every epoch of every stage (the static baseline's too) appends one JSON row to the run's
``metrics.jsonl`` (train/trainer.py) holding, besides its own statistics, ``loss`` (the training
loss) and ``val_accuracy`` (validation accuracy per step, in the focus mode the stage is judged
by: random locations in stage 1, where the policy is not trained yet; the policy's own locations
in stages 2 and 3; the whole image for the baseline, one "step"). ``gfnet report`` draws them
(viz.plot_training_curves) and prints :func:`curve_warnings`; the trainer logs the warnings of
each stage as it ends, so a user sees at once whether a stage converged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STAGE_LABELS = {0: "baseline", 1: "stage 1 (warm-up)", 2: "stage 2 (policy)", 3: "stage 3 (fine-tune)"}
# Each row says whether its stage trains the glance (``trains_glance``, from the stage object:
# Stage.trains_glance). Rows written before that field: the stages that trained the global
# encoder by default then (stage 2 freezes it; a fine-tune may too, optim.freeze_global_stage3).
_GLANCE_TRAINING_STAGES_OF_OLD_ROWS = (1, 3)
NEAR_CHANCE_MARGIN = 0.05  # "near chance": less than 5 points above 1 / num_classes
# "still climbing steeply": the last step's accuracy rose over 2 points per epoch over the last
# two epochs (an earlier step may go on improving while the last has converged: no warning)
STEEP_GAIN_PER_EPOCH = 0.02
FALLING_MARGIN = 0.02  # "falls with more steps": the last step 2 points under the best earlier step
LOOKING_GAIN = 0.01  # "the focus steps add nothing": the policy's last step under 1 point over the glance


@dataclass
class StageCurve:
    """One stage's curve: per epoch, the training loss and the validation accuracy per step."""

    stage: int
    epochs: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    val_accuracy: list[list[float]] = field(default_factory=list)  # [epoch][step]
    val_mode: str = ""
    trains_glance: bool = False  # the stage trains the glance (step 1)
    title: str = ""  # the rows' stage_title (Stage.title); rows written before it: STAGE_LABELS

    @property
    def label(self) -> str:
        return self.title or STAGE_LABELS.get(self.stage, f"stage {self.stage}")


def primary_val(val: dict[str, list[float]]) -> tuple[str, list[float]]:
    """(mode, accuracy per step) a stage is judged by: its first evaluated mode (Stage.val_modes
    lists it first: "policy" once a policy exists, else "random"; "static" for the baseline)."""
    mode = next(iter(val))
    return mode, list(val[mode])


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl, one per (stage, epoch): where a resumed run wrote an epoch
    again, its last row. Unreadable lines (a write cut short by a crash) are skipped."""
    rows: dict[tuple[int, int], dict[str, Any]] = {}
    p = Path(path)
    if not p.is_file():
        return []
    for line in p.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "stage" in rec and "epoch" in rec:
            rows[(int(rec["stage"]), int(rec["epoch"]))] = rec
    return [rows[k] for k in sorted(rows)]


def stage_curves(rows: list[dict[str, Any]]) -> list[StageCurve]:
    """The rows grouped per stage, in stage order (baseline first), epochs ascending."""
    curves: dict[int, StageCurve] = {}
    for rec in rows:
        stage = int(rec["stage"])
        curve = curves.setdefault(stage, StageCurve(stage))
        curve.trains_glance = bool(rec.get("trains_glance", stage in _GLANCE_TRAINING_STAGES_OF_OLD_ROWS))
        curve.title = str(rec.get("stage_title", curve.title))
        if "val_accuracy" in rec:
            mode, acc = rec.get("val_mode", ""), list(rec["val_accuracy"])
        elif rec.get("val"):  # rows written before val_accuracy existed
            mode, acc = primary_val(rec["val"])
        else:
            continue
        curve.epochs.append(int(rec["epoch"]))
        curve.loss.append(float(rec.get("loss", float("nan"))))
        curve.val_accuracy.append(acc)
        curve.val_mode = mode
    return [curves[s] for s in sorted(curves)]


def curve_warnings(curve: StageCurve, num_classes: int) -> list[str]:
    """What a user should hear about one stage's curve, as sentences (none: nothing to say)."""
    if not curve.val_accuracy:
        return []
    out: list[str] = []
    last = curve.val_accuracy[-1]
    chance = 1.0 / max(num_classes, 1)
    near = chance + NEAR_CHANCE_MARGIN
    where = f"{curve.label} ended (epoch {curve.epochs[-1]})"
    if last[-1] < near:
        out.append(f"{where} with validation accuracy {100 * last[-1]:.1f} %, near chance "
                   f"({100 * chance:.1f} % for {num_classes} classes): it has not learned; check the data "
                   "and labels, then the learning rate and the number of epochs")
    elif curve.trains_glance and len(last) > 1 and last[0] < near:
        out.append(f"{where} with the glance (step 1) at {100 * last[0]:.1f} % validation accuracy, near chance "
                   f"({100 * chance:.1f} %): the glance has not learned, so early exits at it will be wrong")
    if len(curve.val_accuracy) >= 3:  # judged on the last step: the prediction the stage trains for
        gain = (last[-1] - curve.val_accuracy[-3][-1]) / 2
        if gain > STEEP_GAIN_PER_EPOCH:
            step = "" if len(last) == 1 else f" (all {len(last)} steps)"
            out.append(f"{where} while its validation accuracy{step} was still climbing "
                       f"{100 * gain:.1f} points per epoch: it has not converged, more epochs would help")
    if curve.val_mode == "policy" and len(last) > 1 and last[-1] < last[0] + LOOKING_GAIN:
        out.append(f"{where} with the focus steps adding {100 * (last[-1] - last[0]):+.1f} points over the "
                   f"glance ({100 * last[0]:.1f} % -> {100 * last[-1]:.1f} % at the last step): the policy has "
                   "not learned where to look, or the classifier ignores the patches")
    if curve.val_mode == "policy" and len(last) > 1 and last[-1] < max(last[:-1]) - FALLING_MARGIN:
        best = max(range(len(last) - 1), key=last.__getitem__)
        out.append(f"{where} with validation accuracy falling with more steps: {100 * last[-1]:.1f} % at the "
                   f"last step against {100 * last[best]:.1f} % at step {best + 1}")
    return out


def run_warnings(metrics_path: str | Path, num_classes: int) -> list[str]:
    """Every stage's warnings for a run's metrics.jsonl."""
    return [w for c in stage_curves(read_metrics(metrics_path)) for w in curve_warnings(c, num_classes)]


__all__ = ["STAGE_LABELS", "StageCurve", "curve_warnings", "primary_val", "read_metrics", "run_warnings",
           "stage_curves"]
