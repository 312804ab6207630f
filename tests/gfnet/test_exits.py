"""The exit rule (gfnet.exits): budget thresholds reproduce their target exit fractions, one
parser reads given thresholds, average FLOPs by hand."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch
from gfnet.errors import CheckpointError
from gfnet.evaluate import evaluate_simulated
from gfnet.exits import (
    NUM_BUDGETS,
    Calibration,
    ExitRule,
    ExitRuleError,
    budget_q,
    calibrate,
    confidences,
    engine_thresholds,
    exit_fractions,
    exit_rule,
    geometric_fractions,
    parse_thresholds,
    thresholds_for_fractions,
    thresholds_for_macs,
)
from gfnet.flops import average_macs, reached_from_exits
from gfnet.inference import dynamic_inference, simulate_exits


def _logits(T=3, N=1000, K=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(1.0, 3.0, T)[:, None, None]  # later steps more confident
    return torch.randn(T, N, K, generator=g) * scale


def test_geometric_fractions_and_q():
    assert budget_q(1) == 0.05 and budget_q(20) == 1.0 and budget_q(39) == 1.95
    fr = geometric_fractions(0.5, 3)
    assert sum(fr) == pytest.approx(1.0)
    assert fr == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    assert geometric_fractions(1.0, 4) == pytest.approx([0.25] * 4)
    for bad in (0, 40, -1, 2.5, True):
        with pytest.raises(ExitRuleError, match="out of range"):
            budget_q(bad)


@pytest.mark.parametrize("q", [0.05, 0.3, 1.0, 1.95])
def test_thresholds_reproduce_fractions(q):
    lg = _logits()
    conf = confidences(lg)
    T, N = conf.shape
    fr = geometric_fractions(q, T)
    thr = thresholds_for_fractions(conf, fr)
    real = exit_fractions(conf, thr)
    target = [math.floor(N * f + 1e-9) for f in fr[:-1]]
    assert [round(r * N) for r in real[:-1]] == target
    assert round(real[-1] * N) == N - sum(target)
    # the engine's own exit rule (simulate_exits uses the same >= test as early_exit)
    es, _ = simulate_exits(lg, thr)
    assert torch.bincount(es - 1, minlength=T)[:-1].tolist() == target


def test_calibrate_all_budgets_monotone_macs():
    lg = _logits()
    macs = [10e6, 12e6, 12e6]
    cal = calibrate(lg, macs)
    assert len(cal.points) == NUM_BUDGETS
    avg = [p.calib_avg_macs for p in cal.points]
    assert all(a <= b + 1e-6 for a, b in itertools.pairwise(avg))  # more budget, more compute
    assert macs[0] <= avg[0] < avg[-1] <= sum(macs)
    # round trip through the checkpoint dict
    cal2 = Calibration.from_dict(cal.to_dict())
    assert cal2.point(7).thresholds == cal.point(7).thresholds
    with pytest.raises(ExitRuleError, match="out of range"):
        cal.point(0)


def test_average_macs_hand_computation():
    counts = [50, 30, 20]
    macs = [10.0, 12.0, 15.0]
    assert reached_from_exits(counts) == [100, 50, 20]
    # 100 samples ran step 1, 50 step 2, 20 step 3
    assert average_macs(counts, macs) == pytest.approx((100 * 10 + 50 * 12 + 20 * 15) / 100)
    assert average_macs([0, 0, 7], macs) == pytest.approx(37.0)
    with pytest.raises(ValueError):
        average_macs([1, 2], macs)


def test_evaluate_simulated_matches_hand():
    lg = _logits(N=400)
    labels = lg[-1].argmax(1)  # the last step is always right
    macs = [10.0, 12.0, 15.0]
    cal = calibrate(lg, macs, budgets=[5, 20])
    res = evaluate_simulated(lg, labels, cal)
    for r, p in zip(res, cal.points):
        es, out = simulate_exits(lg, p.thresholds)
        counts = torch.bincount(es - 1, minlength=3).tolist()
        assert r.exit_counts == counts
        assert r.avg_macs == pytest.approx(sum(c * sum(macs[:k + 1]) for k, c in enumerate(counts)) / 400)
        assert r.avg_flops == pytest.approx(2 * r.avg_macs)
        assert r.accuracy == pytest.approx(float((out.argmax(1) == labels).double().mean()))


def test_target_macs():
    lg = _logits()
    macs = [10.0, 12.0, 15.0]
    p = thresholds_for_macs(lg, macs, 20.0)
    assert p.calib_avg_macs <= 20.0 + 1e-9
    assert p.calib_avg_macs > 20.0 - 0.2  # within a few samples' worth
    with pytest.raises(ExitRuleError, match="out of range"):
        thresholds_for_macs(lg, macs, 5.0)
    with pytest.raises(ExitRuleError, match="out of range"):
        thresholds_for_macs(lg, macs, 40.0)


def test_calibrated_thresholds_on_the_dynamic_engine():
    from gfnet.config import build_config
    from gfnet.inference import anytime_inference
    from gfnet.models import build_model

    from .conftest import tiny_overrides

    torch.manual_seed(0)
    cfg = build_config("digits", overrides=tiny_overrides())
    model = build_model(cfg.model).eval()
    images = torch.randint(0, 256, (40, 1, 128, 128), generator=torch.Generator().manual_seed(3),
                           dtype=torch.uint8)
    lg = anytime_inference(model, images).logits
    fr = [0.5, 0.3, 0.2]
    thr = thresholds_for_fractions(confidences(lg), fr)
    r = dynamic_inference(model, images, thr)
    assert r.exit_counts == [20, 12, 8]


def test_one_parser_of_thresholds():
    """Every way in (the engines, the predictor, exit_rule) reads thresholds the same way: one
    number for every step, T-1 values, or T values with the last ignored; one error type."""
    inf = math.inf
    assert engine_thresholds(None, 3) == [inf, inf, -inf]
    assert engine_thresholds([0.5, 0.6, 0.9], 3) == [0.5, 0.6, -inf]
    assert engine_thresholds(torch.tensor([0.5, 0.6], dtype=torch.float64), 3) == [0.5, 0.6, -inf]
    assert engine_thresholds(0.7, 3) == [0.7, 0.7, -inf]
    assert engine_thresholds(ExitRule([0.2, 0.3], "given"), 3) == [0.2, 0.3, -inf]
    assert engine_thresholds(ExitRule(None, "none (all steps)"), 3) == [inf, inf, -inf]
    assert parse_thresholds((0.1, 0.2, 0.3, 0.4, 0.5), 5) == [0.1, 0.2, 0.3, 0.4]
    for bad, message in [([0.5], "threshold needs one number, 2 values (steps 1..2) or 3 for 3 steps, got 1"),
                         ([0.5, math.nan], "threshold must not be NaN"),
                         (["a", 0.2], "is not a list of numbers"), ("0.5", "must be a number or 2 numbers"),
                         (True, "must be a number or 2 numbers")]:
        with pytest.raises(ExitRuleError, match=re.escape(message)):
            engine_thresholds(bad, 3)
        with pytest.raises(ExitRuleError, match=re.escape(message)):
            exit_rule(None, 3, threshold=bad)
    assert issubclass(ExitRuleError, ValueError)


def test_exit_rule_sources():
    cal = calibrate(_logits(), [1.0, 2.0, 3.0])
    assert exit_rule(None, 3) == ExitRule(None, "none (all steps)")
    assert exit_rule(cal, 3) == ExitRule(cal.point(20).thresholds, "budget 20", 20)
    assert exit_rule(cal, 3, budget=5) == ExitRule(cal.point(5).thresholds, "budget 5", 5)
    assert exit_rule(cal, 3, threshold=0.5) == ExitRule([0.5, 0.5], "given")
    target = cal.point(7).calib_avg_macs
    assert exit_rule(cal, 3, target_macs=target).budget == 7
    with pytest.raises(ExitRuleError, match="at most one of budget, threshold and target_macs"):
        exit_rule(cal, 3, budget=3, threshold=0.5)
    with pytest.raises(ExitRuleError, match="out of range"):
        exit_rule(cal, 3, budget=40)
    with pytest.raises(CheckpointError, match="m.pt has no calibrated exit thresholds for a budget"):
        exit_rule(None, 3, budget=3, source="m.pt")
