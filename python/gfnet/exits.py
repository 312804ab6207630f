"""When an image stops: the exit rule of GFNet's early-exit engines, in one place.

An image exits at the first step k whose confidence (its largest softmax probability) reaches
the threshold of step k; the last step's threshold is -inf, so every image exits by step T.
The rule comes from one of

- a budget (1 .. 39) calibrated on held-out images: as in MSDNet and the official GFNet code,
  q = budget / 20 and the target fraction of images exiting at step k is q^k / sum_j q^j (a
  geometric exit distribution: q < 1 exits early, q > 1 late);
- thresholds given directly: one number for every step, or one per step (steps 1 .. T-1; a
  T-th value is ignored, as the last step always exits);
- an average MACs target: the calibrated budget spending the most MACs, on the calibration
  images, without going over it (``Calibration.rule_for_macs``), or, given held-out logits, the geometric
  distribution whose average MACs meets it (``thresholds_for_macs``: q searched by log-bisection);
- nothing: budget 20 of a calibrated model, else every image runs every step.

Calibration: on held-out images (never the test split: data/calibration_images.py), at step k,
among the images that have not exited yet, the floor(N * fraction_k) most confident exit; the
threshold lies half-way between the confidence of the last one that exits and the next one (the
official code uses the last one's confidence itself; the midpoint selects the same images on the
calibration data and does not depend on the last bit of a softmax). ``Calibration`` holds the
thresholds of every budget; checkpoints store it under ``CKPT_KEY``.

``parse_thresholds`` is the only reader of user-given thresholds and ``engine_thresholds`` what
every engine compares confidences with; every failure is an ``ExitRuleError``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .errors import CheckpointError, GFNetError
from .flops import average_macs

DEFAULT_BUDGET = 20  # the middle of 1 .. 39: a calibrated model's rule when none is asked

NUM_BUDGETS = 39


class ExitRuleError(GFNetError, ValueError):
    """A budget, thresholds or MACs target that cannot give an exit rule, or stored thresholds
    that cannot be read."""


def confidences(step_logits: torch.Tensor) -> torch.Tensor:
    """(T, B, K) logits -> (T, B) max softmax probability, in float32 like early_exit."""
    return torch.softmax(step_logits.float(), dim=-1).amax(-1)


# ---------------------------------------------------------------------- the rule
@dataclass(frozen=True)
class ExitRule:
    """When images stop: the confidence thresholds of steps 1 .. T-1 (None: every image runs
    all T steps) and where they come from ("budget 5", "given", ...)."""

    thresholds: list[float] | None
    source: str
    budget: int | None = None


ALL_STEPS = ExitRule(None, "none (all steps)")


def parse_thresholds(value: Any, steps: int) -> list[float]:
    """Thresholds of steps 1 .. T-1 from one number (every step), T-1 numbers or T numbers (the
    last ignored: every image exits at step T), as a list, tuple or tensor."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().flatten().tolist()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        values = [float(value)] * (steps - 1)
    elif isinstance(value, Sequence) and not isinstance(value, str):
        try:
            values = [float(t) for t in value]
        except (TypeError, ValueError):
            raise ExitRuleError(f"threshold {value!r} is not a list of numbers") from None
        if len(values) == steps and steps > 1:
            values = values[:-1]
        if len(values) != steps - 1:
            raise ExitRuleError(f"threshold needs one number, {steps - 1} values (steps 1..{steps - 1}) "
                                f"or {steps} for {steps} steps, got {len(values)}")
    else:
        raise ExitRuleError(f"threshold must be a number or {steps - 1} numbers, not {value!r}")
    if any(math.isnan(v) for v in values):
        raise ExitRuleError("threshold must not be NaN")
    return values


def engine_thresholds(rule: ExitRule | Any, steps: int) -> list[float]:
    """The T thresholds an engine compares confidences with (the last -inf) from an ExitRule,
    thresholds as ``parse_thresholds`` reads them, or None (nobody exits early)."""
    if isinstance(rule, ExitRule):
        rule = rule.thresholds
    values = [math.inf] * (steps - 1) if rule is None else parse_thresholds(rule, steps)
    return values + [-math.inf]


def exit_rule(calibration: Calibration | None, steps: int, *, budget: int | None = None,
              threshold: Any = None, target_macs: float | None = None, source: str = "the model") -> ExitRule:
    """The rule of a calibrated ``budget`` (1 .. 39), of an explicit ``threshold``
    (parse_thresholds), or of the calibrated budget whose average MACs on the calibration data
    is the largest not above ``target_macs``; none of them: budget 20 when ``calibration`` is
    given, else every image runs all steps. ``source`` names the model in errors."""
    given = [n for n, v in (("budget", budget), ("threshold", threshold), ("target_macs", target_macs))
             if v is not None]
    if len(given) > 1:
        raise ExitRuleError(f"give at most one of budget, threshold and target_macs (got {', '.join(given)})")
    if threshold is not None:
        return ExitRule(parse_thresholds(threshold, steps), "given")
    if budget is not None:
        budget_q(budget)  # out of range: an ExitRuleError before the calibration is asked for
        return ExitRule(_calibrated(calibration, "budget", source).point(budget).thresholds,
                        f"budget {budget}", budget)
    if target_macs is not None:
        return _calibrated(calibration, "target_macs", source).rule_for_macs(float(target_macs), source)
    if calibration is None:
        return ALL_STEPS
    try:
        point = calibration.point(DEFAULT_BUDGET)
    except ExitRuleError:
        return ALL_STEPS
    return ExitRule(point.thresholds, f"budget {DEFAULT_BUDGET}", DEFAULT_BUDGET)


def _calibrated(calibration: Calibration | None, what: str, source: str) -> Calibration:
    if calibration is None:
        raise CheckpointError(f"{source} has no calibrated exit thresholds for a {what}: run "
                              "`gfnet eval` on it first (it stores them), or pass threshold=")
    return calibration


# ---------------------------------------------------------------------- budgets
def budget_q(budget: int) -> float:
    """q of budget 1 .. 39 (q = budget / 20)."""
    if isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget <= NUM_BUDGETS:
        raise ExitRuleError(f"budget {budget!r} is out of range: budgets are 1 .. {NUM_BUDGETS}")
    return budget / 20.0


def geometric_fractions(q: float, steps: int) -> list[float]:
    """Target exit fractions of steps 1 .. T, proportional to q^k."""
    if not (q > 0 and math.isfinite(q)):
        raise ExitRuleError(f"q must be a positive number, got {q!r}")
    w = [math.exp(k * math.log(q)) for k in range(1, steps + 1)]
    s = sum(w)
    return [x / s for x in w]


def thresholds_for_fractions(conf: torch.Tensor, fractions: Sequence[float]) -> list[float]:
    """Thresholds of steps 1 .. T-1 (the last is -inf, not returned) so that on the samples
    whose confidences are ``conf`` (T, N) floor(N * fraction_k) exit at step k."""
    T, N = conf.shape
    if len(fractions) != T:
        raise ExitRuleError(f"{len(fractions)} exit fractions for {T} steps")
    conf = conf.double().cpu()
    remaining = torch.ones(N, dtype=torch.bool)
    out: list[float] = []
    for k in range(T - 1):
        out_n = math.floor(N * fractions[k] + 1e-9)
        c = conf[k][remaining].sort(descending=True).values
        if out_n <= 0 or c.numel() == 0:
            thr = math.inf
        elif out_n >= c.numel():
            thr = float(c[-1])
        else:
            a, b = float(c[out_n - 1]), float(c[out_n])
            thr = (a + b) / 2 if a > b else a
        out.append(thr)
        remaining &= ~(conf[k] >= thr)
    return out


def exit_fractions(conf: torch.Tensor, thresholds: Sequence[float]) -> list[float]:
    """Fractions exiting at each step when (T, N) confidences meet ``thresholds``."""
    T, N = conf.shape
    thr = torch.tensor(engine_thresholds(thresholds, T), dtype=torch.float64)
    done = conf.double().cpu() >= thr[:, None]
    first = done.to(torch.int8).argmax(0)
    return [c / max(N, 1) for c in torch.bincount(first, minlength=T).tolist()]


@dataclass
class BudgetPoint:
    budget: int | None  # 1 .. 39, or None for a FLOPs target
    q: float
    target_fractions: list[float]
    thresholds: list[float]  # steps 1 .. T-1
    calib_fractions: list[float]  # realised on the calibration data
    calib_avg_macs: float
    target_macs: float | None = None


@dataclass
class Calibration:
    split: str  # which images set the thresholds: "val", "train", "official"
    samples: int
    step_macs: list[float]
    points: list[BudgetPoint] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # how those images were chosen

    def to_dict(self) -> dict[str, Any]:
        return {"split": self.split, "samples": self.samples, "step_macs": list(self.step_macs),
                "points": [asdict(p) for p in self.points], "details": dict(self.details)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        try:
            return cls(d["split"], int(d["samples"]), [float(x) for x in d["step_macs"]],
                       [BudgetPoint(**p) for p in d["points"]], dict(d.get("details") or {}))
        except (KeyError, TypeError) as e:
            raise ExitRuleError(f"stored exit thresholds are malformed ({e})") from None

    def point(self, budget: int) -> BudgetPoint:
        budget_q(budget)
        for p in self.points:
            if p.budget == budget:
                return p
        raise ExitRuleError(f"budget {budget} was not calibrated")

    def rule_for_macs(self, target: float, source: str = "the model") -> ExitRule:
        """The calibrated budget spending the most MACs on average (on the calibration data)
        without going over ``target``: between budgets nothing is interpolated, since thresholds
        of a budget in between would need the calibration data's logits (``gfnet eval
        --target-macs`` computes those with ``thresholds_for_macs``)."""
        if not (target > 0 and math.isfinite(target)):
            raise ExitRuleError(f"target_macs must be a positive number, got {target!r}")
        if not all(math.isfinite(p.calib_avg_macs) for p in self.points):
            # the release's thresholds (an imported official checkpoint) come without them
            raise ExitRuleError(f"the thresholds stored in {source} ({self.split}) carry no average MACs on "
                                "calibration data to choose a budget by: give a budget, or calibrate your own "
                                "(gfnet eval --recalibrate)")
        below = [p for p in self.points if p.calib_avg_macs <= target]
        if not below:
            cheapest = min(self.points, key=lambda p: p.calib_avg_macs)
            raise ExitRuleError(f"target_macs {target / 1e6:.4g} M is below the cheapest calibrated budget "
                                f"(budget {cheapest.budget}: {cheapest.calib_avg_macs / 1e6:.4g} M per image)")
        p = max(below, key=lambda p: (p.calib_avg_macs, -(p.budget or 0)))
        return ExitRule(p.thresholds, f"budget {p.budget} ({p.calib_avg_macs / 1e6:.4g} M MACs on the "
                                      f"calibration data, target {target / 1e6:.4g} M)", p.budget)


def _point(conf: torch.Tensor, step_macs: Sequence[float], q: float, budget: int | None) -> BudgetPoint:
    T, N = conf.shape
    fr = geometric_fractions(q, T)
    thr = thresholds_for_fractions(conf, fr)
    real = exit_fractions(conf, thr)
    counts = [round(f * N) for f in real]
    return BudgetPoint(budget, q, fr, thr, real, average_macs(counts, step_macs))


def calibrate(step_logits: torch.Tensor, step_macs: Sequence[float], *,
              budgets: Sequence[int] | None = None, split: str = "val",
              details: dict[str, Any] | None = None) -> Calibration:
    """Thresholds of every budget (default all 39) on held-out (T, N, K) all-step logits."""
    conf = confidences(step_logits)
    T = conf.shape[0]
    if len(step_macs) != T:
        raise ExitRuleError(f"{len(step_macs)} per-step MACs for {T} steps")
    budgets = list(range(1, NUM_BUDGETS + 1)) if budgets is None else list(budgets)
    cal = Calibration(split, conf.shape[1], [float(m) for m in step_macs], details=dict(details or {}))
    for b in budgets:
        cal.points.append(_point(conf, step_macs, budget_q(b), b))
    return cal


def thresholds_for_macs(step_logits: torch.Tensor, step_macs: Sequence[float], target_macs: float,
                        *, iters: int = 60) -> BudgetPoint:
    """The geometric exit distribution whose calibrated average MACs come closest to (and not
    above, when possible) ``target_macs`` on the held-out logits."""
    conf = confidences(step_logits)
    lo_m, hi_m = float(step_macs[0]), float(sum(step_macs))
    if not (lo_m <= target_macs <= hi_m):
        raise ExitRuleError(f"target average MACs {target_macs / 1e6:.3f} M is out of range: between "
                            f"the glance alone ({lo_m / 1e6:.3f} M) and all steps ({hi_m / 1e6:.3f} M)")
    lo, hi = math.log(1e-4), math.log(1e4)
    best: BudgetPoint | None = None
    for _ in range(iters):
        mid = (lo + hi) / 2
        p = _point(conf, step_macs, math.exp(mid), None)
        if p.calib_avg_macs <= target_macs:
            lo = mid
            if best is None or p.calib_avg_macs >= best.calib_avg_macs:
                best = p
        else:
            hi = mid
    if best is None:
        best = _point(conf, step_macs, math.exp(lo), None)
    best.target_macs = float(target_macs)
    return best


# ---------------------------------------------------------------------- checkpoints
CKPT_KEY = "exit_thresholds"


def calibration_key(precision: str = "fp32") -> str:
    """Where a checkpoint keeps the thresholds calibrated in ``precision`` (gfnet.precision):
    a model run in bf16 gives other confidences than in fp32, so each precision has its own."""
    return CKPT_KEY if precision == "fp32" else f"{CKPT_KEY}_{precision}"


def store_calibration(ckpt_path, cal: Calibration, ck: dict[str, Any] | None = None, *,
                      precision: str = "fp32") -> None:
    """Adds the calibration (made in ``precision``) to a checkpoint file (atomically rewritten;
    nothing else changes). ck: the file's contents when the caller has already loaded them
    (they are updated too)."""
    from .checkpoint import load, save_atomic

    if ck is None:
        ck = load(ckpt_path)
    ck[calibration_key(precision)] = cal.to_dict()
    save_atomic(ck, ckpt_path)


def stored_calibration(ck: dict[str, Any], precision: str = "fp32") -> Calibration | None:
    """The thresholds calibrated in ``precision``, or None."""
    d = ck.get(calibration_key(precision))
    return None if d is None else Calibration.from_dict(d)


__all__ = ["ALL_STEPS", "CKPT_KEY", "DEFAULT_BUDGET", "NUM_BUDGETS", "BudgetPoint", "Calibration",
           "ExitRule", "ExitRuleError", "budget_q", "calibrate", "calibration_key", "confidences",
           "engine_thresholds", "exit_fractions",
           "exit_rule", "geometric_fractions", "parse_thresholds", "store_calibration", "stored_calibration",
           "thresholds_for_fractions", "thresholds_for_macs"]
