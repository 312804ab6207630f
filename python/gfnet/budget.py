"""Exit thresholds for a computational budget, and budgeted evaluation.

Budgets as in MSDNet and the official GFNet code: for budget i = 1 .. 39, q = i / 20 and the
target fraction of samples exiting at step k (k = 1 .. T) is q^k / sum_j q^j (a geometric exit
distribution: q < 1 exits early, q > 1 late). The thresholds are set on held-out data (the
calibration split, never the test images: data/calibration.py): at step k, among the samples that have not exited yet, the out_k =
floor(N * fraction_k) most confident exit; the threshold is placed half-way between the
confidence of the last one that exits and the next one (the official code uses the last one's
confidence itself; the midpoint selects the same samples on the calibration data and does not
depend on the last bit of a softmax). The last step's threshold is -inf.

A target average FLOPs is met by searching q (continuous, log-bisection) so that the average
MACs of the calibrated exits on the held-out data meets the target.

Evaluation: accuracy and average FLOPs per budget on the test split, with exits from the
dynamic engine (the exit counts it really produced) or simulated from all-step logits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .errors import GFNetError
from .flops import average_macs
from .inference import confidences, exit_counts_of, simulate_exits

NUM_BUDGETS = 39


class BudgetError(GFNetError, ValueError):
    pass


def budget_q(budget: int) -> float:
    """q of budget 1 .. 39 (q = budget / 20)."""
    if isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget <= NUM_BUDGETS:
        raise BudgetError(f"budget {budget!r} is out of range: budgets are 1 .. {NUM_BUDGETS}")
    return budget / 20.0


def geometric_fractions(q: float, steps: int) -> list[float]:
    """Target exit fractions of steps 1 .. T, proportional to q^k."""
    if not (q > 0 and math.isfinite(q)):
        raise BudgetError(f"q must be a positive number, got {q!r}")
    w = [math.exp(k * math.log(q)) for k in range(1, steps + 1)]
    s = sum(w)
    return [x / s for x in w]


def thresholds_for_fractions(conf: torch.Tensor, fractions: Sequence[float]) -> list[float]:
    """Thresholds of steps 1 .. T-1 (the last is -inf, not returned) so that on the samples
    whose confidences are ``conf`` (T, N) floor(N * fraction_k) exit at step k."""
    T, N = conf.shape
    if len(fractions) != T:
        raise BudgetError(f"{len(fractions)} exit fractions for {T} steps")
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
    thr = torch.tensor(list(thresholds)[:T - 1] + [-math.inf], dtype=torch.float64)
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
            raise BudgetError(f"stored exit thresholds are malformed ({e})") from None

    def point(self, budget: int) -> BudgetPoint:
        budget_q(budget)
        for p in self.points:
            if p.budget == budget:
                return p
        raise BudgetError(f"budget {budget} was not calibrated")


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
        raise BudgetError(f"{len(step_macs)} per-step MACs for {T} steps")
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
        raise BudgetError(f"target average MACs {target_macs / 1e6:.3f} M is out of range: between "
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


def store_calibration(ckpt_path, cal: Calibration, ck: dict[str, Any] | None = None) -> None:
    """Adds the calibration to a checkpoint file (atomically rewritten; nothing else changes).
    ck: the file's contents when the caller has already loaded them (they are updated too)."""
    from .checkpoint import load, save_atomic

    if ck is None:
        ck = load(ckpt_path)
    ck[CKPT_KEY] = cal.to_dict()
    save_atomic(ck, ckpt_path)


def stored_calibration(ck: dict[str, Any]) -> Calibration | None:
    d = ck.get(CKPT_KEY)
    return None if d is None else Calibration.from_dict(d)


# ---------------------------------------------------------------------- evaluation
@dataclass
class BudgetResult:
    budget: int | None
    q: float
    thresholds: list[float]
    accuracy: float
    exit_counts: list[int]
    avg_macs: float

    @property
    def avg_flops(self) -> float:
        return 2 * self.avg_macs

    def to_row(self) -> dict[str, Any]:
        d = asdict(self)
        d["avg_flops"] = self.avg_flops
        d["thresholds"] = [None if not math.isfinite(t) else t for t in self.thresholds]
        return d


def evaluate_simulated(step_logits: torch.Tensor, labels: torch.Tensor, cal: Calibration,
                       points: Sequence[BudgetPoint] | None = None) -> list[BudgetResult]:
    """Budgeted evaluation the official way: exits simulated on all-step test logits."""
    T = step_logits.shape[0]
    out = []
    for p in points if points is not None else cal.points:
        es, lg = simulate_exits(step_logits, p.thresholds)
        counts = exit_counts_of(es, T)
        acc = float((lg.argmax(1).cpu() == labels).double().mean())
        out.append(BudgetResult(p.budget, p.q, p.thresholds, acc, counts, average_macs(counts, cal.step_macs)))
    return out


def evaluate_dynamic(model, loader, cal: Calibration, points: Sequence[BudgetPoint] | None = None, *,
                     device="cpu", max_batches: int = 0) -> list[BudgetResult]:
    """Budgeted evaluation with the dynamic engine: realised exit counts and accuracy."""
    from .inference import run_dataset

    out = []
    for p in points if points is not None else cal.points:
        r = run_dataset(model, loader, p.thresholds, device=device, max_batches=max_batches)
        acc = r["correct"] / max(r["total"], 1)
        out.append(BudgetResult(p.budget, p.q, p.thresholds, acc, r["exit_counts"],
                                average_macs(r["exit_counts"], cal.step_macs)))
    return out


__all__ = ["NUM_BUDGETS", "BudgetError", "BudgetPoint", "BudgetResult", "Calibration", "budget_q",
           "calibrate", "evaluate_dynamic", "evaluate_simulated", "exit_fractions",
           "geometric_fractions", "store_calibration", "stored_calibration",
           "thresholds_for_fractions", "thresholds_for_macs"]
