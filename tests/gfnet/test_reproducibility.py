"""Reproducible training: run.deterministic gives bit-identical runs, metrics.jsonl holds the
curves a user judges convergence by, and their warnings say when a stage did not converge."""

from __future__ import annotations

import json

import pytest
import torch

from gfnet.train import train
from gfnet.train.baseline import train_baseline
from gfnet.train.curves import StageCurve, curve_warnings, read_metrics, run_warnings, stage_curves

from ..helpers import deterministic_algorithms


def _state(path):
    return torch.load(path, weights_only=True)["model"]


@pytest.mark.parametrize("threads", [1, 2])
def test_deterministic_runs_are_bit_identical(tiny_cfg, tmp_path, threads):
    """Two runs of every stage and the baseline with the same seed and thread count: the same
    bits in every weight and the same losses and accuracies in every metrics row."""
    runs = []
    # run.deterministic switches torch's global setting on: given back after, for later tests
    with deterministic_algorithms(torch.are_deterministic_algorithms_enabled()):
        for name in ("a", "b"):
            cfg = tiny_cfg(**{"run.deterministic": True, "run.threads": threads, "run.seed": 3,
                              "optim.epochs_stage1": 2, "optim.epochs_stage2": 1, "optim.epochs_stage3": 1})
            out = tmp_path / name
            train_baseline(cfg.copy(), out)
            train(cfg, out, [1, 2, 3])
            runs.append(out)
    torch.set_num_threads(1)  # the thread count the other tests run with (conftest)
    a, b = runs
    for f in ("baseline.pt", "stage1.pt", "stage2.pt", "stage3.pt"):
        sa, sb = _state(a / f), _state(b / f)
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{f}: {k} differs between two deterministic runs"
    strip = lambda r: {k: v for k, v in r.items() if k not in ("time", "epoch_time_s", "train_time_s",  # noqa: E731
                                                                "images_per_s")}
    assert [strip(r) for r in read_metrics(a / "metrics.jsonl")] == \
        [strip(r) for r in read_metrics(b / "metrics.jsonl")]


def test_metrics_rows_hold_validation_accuracy_per_step(tiny_cfg, tmp_path):
    cfg = tiny_cfg(**{"optim.epochs_stage1": 2, "optim.epochs_stage2": 1, "optim.epochs_stage3": 1})
    train_baseline(cfg.copy(), tmp_path)
    train(cfg, tmp_path, [1, 2, 3])
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["stage"], r["epoch"]) for r in rows] == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (2, 1), (3, 1)]
    modes = {r["stage"]: r["val_mode"] for r in rows}
    assert modes == {0: "static", 1: "random", 2: "policy", 3: "policy"}
    # which stages train the glance: the warm-up, and the fine-tune unless it freezes the glance
    glance = {r["stage"]: r["trains_glance"] for r in rows}
    assert glance == {0: False, 1: True, 2: False, 3: not cfg.optim.freeze_global_stage3}
    for r in rows:
        steps = 1 if r["stage"] == 0 else cfg.model.max_steps
        assert len(r["val_accuracy"]) == steps and all(0.0 <= a <= 1.0 for a in r["val_accuracy"])
        assert r["val_accuracy"] == r["val"][r["val_mode"]] and isinstance(r["loss"], float)
    curves = stage_curves(rows)
    assert [c.stage for c in curves] == [0, 1, 2, 3] and curves[1].epochs == [1, 2]


def test_read_metrics_keeps_the_last_row_of_an_epoch_written_twice(tmp_path):
    """A run killed after writing an epoch's row but before its checkpoint redoes that epoch."""
    p = tmp_path / "metrics.jsonl"
    rows = [{"stage": 1, "epoch": 1, "loss": 2.0, "val_accuracy": [0.1]},
            {"stage": 1, "epoch": 2, "loss": 1.5, "val_accuracy": [0.2]},
            {"stage": 1, "epoch": 2, "loss": 1.4, "val_accuracy": [0.3]}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"stage": 1, "epo')  # a cut-off last line
    assert [r["loss"] for r in read_metrics(p)] == [2.0, 1.4]


def _curve(stage, accs, mode="policy", trains_glance=None):
    trains_glance = stage in (1, 3) if trains_glance is None else trains_glance
    return StageCurve(stage, list(range(1, len(accs) + 1)), [1.0] * len(accs), [list(a) for a in accs], mode,
                      trains_glance)


def test_warnings_glance_near_chance_and_still_climbing():
    flat = [[0.80, 0.95, 0.97]] * 4
    assert curve_warnings(_curve(3, flat), 10) == []
    stuck = [[0.11, 0.90, 0.95], [0.10, 0.93, 0.96], [0.12, 0.94, 0.97]]
    (w,) = curve_warnings(_curve(1, stuck, "random"), 10)
    assert "glance (step 1) at 12.0 %" in w and "near chance" in w
    assert curve_warnings(_curve(2, stuck), 10) == []  # stage 2 does not train the glance
    assert curve_warnings(_curve(3, stuck, trains_glance=False), 10) == []  # nor a frozen fine-tune
    # rows written before the field: stages 1 and 3 trained the glance
    (old,) = stage_curves([{"stage": 3, "epoch": 1, "val_mode": "policy", "val_accuracy": [0.1, 0.9]}])
    assert old.trains_glance and len(curve_warnings(old, 10)) == 1
    climbing = [[0.30, 0.50, 0.60], [0.40, 0.60, 0.70], [0.55, 0.70, 0.85]]
    (w,) = curve_warnings(_curve(1, climbing, "random"), 10)
    assert "(all 3 steps) was still climbing 12.5 points per epoch" in w
    # the glance still improving while the last step has levelled off: converged enough
    glance_climbing = [[0.57, 0.98, 0.983], [0.74, 0.99, 0.992], [0.76, 0.99, 0.994]]
    assert curve_warnings(_curve(3, glance_climbing), 10) == []
    (w,) = curve_warnings(_curve(0, [[0.09], [0.10], [0.11]], "static"), 10)
    assert "near chance" in w and "not learned" in w


def test_warnings_accuracy_falling_with_more_steps():
    nothing, w = curve_warnings(_curve(3, [[0.731, 0.688, 0.644]]), 4)
    assert "falling with more steps" in w and "64.4 %" in w and "73.1 % at step 1" in w
    assert "focus steps adding -8.7 points over the glance" in nothing
    # random locations in stage 1 may fall with steps: that says nothing about the policy
    assert curve_warnings(_curve(1, [[0.731, 0.688, 0.644]], "random"), 4) == []


def test_run_warnings_read_the_run_folder(tmp_path):
    rows = [{"stage": 1, "epoch": e, "loss": 1.0, "val_mode": "random", "val_accuracy": [0.1, 0.5]}
            for e in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (w,) = run_warnings(tmp_path / "metrics.jsonl", 10)
    assert "stage 1 (warm-up) ended (epoch 3) with the glance" in w
    assert run_warnings(tmp_path / "missing.jsonl", 10) == []


def test_warning_focus_steps_adding_nothing_over_the_glance():
    """A policy run whose patches add nothing (the classifier kept the glance's answer)."""
    (w,) = curve_warnings(_curve(2, [[0.818, 0.814, 0.823]] * 3), 10)
    assert "focus steps adding +0.5 points over the glance" in w and "not learned where to look" in w
    assert curve_warnings(_curve(1, [[0.818, 0.814, 0.823]] * 3, "random"), 10) == []  # random locations
