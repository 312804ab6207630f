"""The main job end to end: what ``gfnet demo`` (and ``make demo``) runs, callable from Python.

    report = run_demo(build_config("digits"), "runs/demo", log=print)

1. train the static baseline (the backbone on the full image) -> OUT/baseline.pt;
2. train GFNet through its three stages, both encoders starting from that baseline (the paper
   starts them from ImageNet-trained weights: the network a user already has);
3. calibrate exit thresholds on held-out images (``data.calibration``: the validation split
   when it is not the test split, as for digits) and evaluate every budget on the test
   split -> OUT/eval/;
4. the report: throughput of the dynamic engine against all steps and the baseline, pictures
   -> OUT/report.md, OUT/report.json, OUT/report/.
Every step resumes: a finished baseline, finished stages and stored thresholds are reused, and a
run whose report is newer than its baseline and last stage returns that report.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config import Config
from .device import pick_device
from .errors import GFNetError
from .evaluate import evaluate_run
from .files import write_atomic
from .report import ACCURACY_MARGIN, build_report, pct

STEPS = 4


class DemoClaims:
    """The demo's claims, checked against its targets in its report (gfnet.report.Claims): GFNet
    reaches a strong baseline's accuracy for a fraction of its MACs and runs that much faster,
    and looking matters (the glance alone does not do, the focus steps do, and where they look
    counts). A run on a user's own data states the same facts without targets."""

    macs_fraction = 0.40  # within 1 point of the baseline at no more than 40 % of its MACs
    speedup = 2.0  # realised dynamic throughput at that point >= 2x the baseline's
    baseline_min_accuracy = 0.95  # the baseline is a strong one
    glance_max_accuracy = 0.85
    last_step_min_accuracy = 0.95
    policy_gain_at_step_2 = 0.10  # learned locations over uniformly random ones, at step 2

    def check(self, r: dict[str, Any]) -> dict[str, bool]:
        op, acc = r["operating_point"], r["gfnet"]["anytime_accuracy"]
        rnd, learned = r["random_policy"]["anytime_accuracy"], r["random_policy"]["policy_anytime_accuracy"]
        return {
            "accuracy_within_1pt_at_40pct_macs": bool(op["meets_accuracy"]
                                                      and op["macs_fraction"] <= self.macs_fraction),
            "dynamic_throughput_2x_baseline": bool(r["speedup_vs_baseline"] >= self.speedup),
            "baseline_at_least_95pct": bool(r["baseline"]["test_accuracy"] >= self.baseline_min_accuracy),
            "glance_at_most_85pct": bool(acc[0] <= self.glance_max_accuracy),
            "last_step_at_least_95pct": bool(acc[-1] >= self.last_step_min_accuracy),
            "policy_beats_random_by_10pts_at_step_2": bool(
                len(acc) > 1 and learned[1] - rnd[1] >= self.policy_gain_at_step_2 - 1e-12),
        }

    def markdown(self, r: dict[str, Any]) -> list[str]:
        b, g, op, mp = r["baseline"], r["gfnet"], r["operating_point"], r["matching_point"]
        T, acc = g["steps"], g["anytime_accuracy"]
        rnd, learned = r["random_policy"]["anytime_accuracy"], r["random_policy"]["policy_anytime_accuracy"]
        met = r["claims"]
        ok = {True: "**met**", False: "**NOT met**"}
        return [
            "## The claims",
            "",
            f"- Accuracy within 1 point of the baseline at no more than {self.macs_fraction:.0%} of its MACs: "
            f"{ok[met['accuracy_within_1pt_at_40pct_macs']]}. "
            + ("" if op["meets_accuracy"] else "No budget is within 1 point; the most accurate, ")
            + f"Budget {op['budget']}: {pct(op['accuracy'])} at {op['avg_macs'] / 1e6:.2f} M MACs "
            f"({pct(op['macs_fraction'])} of the baseline's {b['macs'] / 1e6:.2f} M) against the baseline's "
            f"{pct(b['test_accuracy'])}. Margin: the most accurate budget within {self.macs_fraction:.0%} of "
            f"the MACs is {headline_margin(r, self):+.2f} points from the least accuracy the claim allows.",
            f"- Realised dynamic-inference throughput at that budget at least {self.speedup:g}x the baseline's: "
            f"{ok[met['dynamic_throughput_2x_baseline']]} ({r['speedup_vs_baseline']:.2f}x).",
            "- " + (f"The baseline's accuracy itself is reached at budget {mp['budget']}: {pct(mp['accuracy'])} "
                    f"at {mp['avg_macs'] / 1e6:.2f} M MACs ({pct(mp['macs_fraction'])} of the baseline's)."
                    if mp else "No budget reaches the baseline's accuracy itself."),
            f"- The baseline itself at least {100 * self.baseline_min_accuracy:.0f} % accurate: "
            f"{ok[met['baseline_at_least_95pct']]} ({pct(b['test_accuracy'])}).",
            "",
            "Looking matters: the glance alone is not enough, looking closer is, and where the model looks counts.",
            "",
            f"- The glance alone at most {100 * self.glance_max_accuracy:.0f} % accurate: "
            f"{ok[met['glance_at_most_85pct']]} ({pct(acc[0])}).",
            f"- The last step (all {T} steps) at least {100 * self.last_step_min_accuracy:.0f} % accurate: "
            f"{ok[met['last_step_at_least_95pct']]} ({pct(acc[-1])}).",
            f"- The learned policy beats uniformly random focus locations by at least "
            f"{100 * self.policy_gain_at_step_2:.0f} points at step 2: "
            f"{ok[met['policy_beats_random_by_10pts_at_step_2']]}"
            + (f" ({pct(learned[1])} against {pct(rnd[1])}, {100 * (learned[1] - rnd[1]):+.1f} points)."
               if T > 1 else " (the model takes no focus step)."),
            "",
        ]

    def reproduce(self, r: dict[str, Any]) -> list[str]:
        return [f"gfnet demo --preset {r['preset']} --out {r['run']}      # all of it; or step by step:",
                f"gfnet train --preset {r['preset']} --out {r['run']} --resume",
                f"gfnet train --preset {r['preset']} --baseline --out {r['run']} --resume",
                f"gfnet eval {r['run']} --baseline {r['baseline_checkpoint']} --simulate"]


DEMO_CLAIMS = DemoClaims()


def is_demo_run(run_dir: str | Path) -> bool:
    """Whether ``gfnet demo`` made the run (its wall clock is in the folder): ``gfnet report`` on
    it checks the demo's claims as the demo did."""
    return (Path(run_dir) / WALL_TIME_FILE).is_file()


def run_demo(cfg: Config, out: str | Path, *, images: int = 8, passes: int = 3,
             log: Callable[[str], None] | None = None, force: bool = False) -> dict[str, Any]:
    """Run (or finish) the four steps into ``out``; returns the report (``report.json``).

    images: test images drawn with their glance and patches; passes: timed passes per engine;
    log: receives a heading per step and the results of each. force: go on in an ``out`` whose
    config.yaml records other model, data or schedule settings (refused otherwise).
    """
    from .train import gfnet_stages, train
    from .train.baseline import BASELINE_FILE, train_baseline

    say = log or (lambda _msg: None)
    out = Path(out)
    baseline = out / BASELINE_FILE
    clock = _WallClock(out / WALL_TIME_FILE)

    def step(k: int, what: str) -> None:
        clock.save()
        say(f"\n== gfnet demo {k}/{STEPS}: {what} ==")

    step(1, f"train the static baseline ({cfg.model.backbone} on the full image) -> {baseline}")
    # resume: a finished baseline is reused; force: go on though the config differs from the
    # run's config.yaml (gfnet.run_config)
    ck = train_baseline(cfg.copy(), out, resume=True, force=force)
    say(f"static baseline: test accuracy {ck['test_accuracy']:.4f}, {ck['macs'] / 1e6:.2f} M MACs per image")
    gf_cfg = cfg.copy()
    if not (gf_cfg.model.init_from or gf_cfg.model.pretrained):
        gf_cfg.model.init_from = str(baseline)
    step(2, f"train GFNet ({cfg.preset}), encoders from {gf_cfg.model.init_from or 'pretrained weights'}: "
         + {"ppo": "warm-up, policy (PPO), fine-tune",
            "mixture": "warm-up, policy (by gradient through candidate glimpses), fine-tune",
            "differentiable": "warm-up, then policy, encoders and classifier end to end (differentiable)",
            }[gf_cfg.optim.policy_training]
         + f" -> {out}")
    train(gf_cfg, out, gfnet_stages(gf_cfg), resume=True, force=force)  # finished stages are skipped
    finished = _finished_report(out)
    if finished is not None:
        say(f"\n== gfnet demo 3-4/{STEPS}: already done, {out / 'report.json'} reused ==")
        return finished
    # simulate: every budget's exits from one all-step pass (the same numbers as the dynamic
    # engine, which the tests check); the report runs the dynamic engine itself for throughput.
    step(3, "calibrate thresholds on held-out images (never the test split), evaluate every budget on the test split")
    evaluate_run(out, baseline=baseline, simulate=True, device=cfg.run.device, log=log)
    step(4, "report: throughput of the dynamic engine vs all steps vs the baseline, pictures")
    report = build_report(out, device=pick_device(cfg.run.device), num_images=images, passes=passes,
                          claims=DEMO_CLAIMS)  # the demo checks its claims, whatever its data
    clock.save()
    return report


def _finished_report(out: Path) -> dict[str, Any] | None:
    """The run's report.json when it was written after everything it reports on (the baseline
    and the last stage); else None. report.json is the report's last, atomic write."""
    from .checkpoint import stage_path
    from .train.baseline import BASELINE_FILE
    report = out / "report.json"
    inputs = [out / BASELINE_FILE, stage_path(out, 3)]
    if not report.is_file() or not all(p.is_file() for p in inputs):
        return None
    if report.stat().st_mtime < max(p.stat().st_mtime for p in inputs):
        return None
    return json.loads(report.read_text())


WALL_TIME_FILE = "demo_wall_time.json"


class _WallClock:
    """The demo's wall time summed over every invocation that worked on a run folder, saved at
    each step: a run resumed after an interruption (or finished in pieces) still reports what
    the whole run cost, not just its last piece."""

    def __init__(self, path: Path):
        self.path = path
        self.before = wall_time(path.parent)
        self.start = time.time()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        seconds = self.before + time.time() - self.start
        write_atomic(self.path, json.dumps({"seconds": round(seconds, 1)}).encode())


def wall_time(run_dir: str | Path) -> float:
    """Seconds ``run_demo`` has spent on ``run_dir`` so far (0 for a folder it never ran in)."""
    path = Path(run_dir) / WALL_TIME_FILE
    return float(json.loads(path.read_text())["seconds"]) if path.exists() else 0.0


# The headline figures of one demo run (a row of the spread table): key -> (heading, kind);
# "pct" figures are fractions shown in percent, "x" ratios, "min" minutes.
HEADLINE: dict[str, tuple[str, str]] = {
    "baseline": ("baseline", "pct"),
    "glance": ("glance (step 1)", "pct"),
    "step2": ("step 2", "pct"),
    "last_step": ("last step", "pct"),
    "random_step2": ("random locations, step 2", "pct"),
    "policy_gain": ("policy gain at step 2 (points)", "pts"),
    "best_budget_accuracy": ("best budget within 1 pt", "pct"),
    "best_budget_macs": ("its share of the baseline's MACs", "pct"),
    "headline_margin": ("headline margin (points)", "pts"),
    "speedup": ("dynamic throughput vs baseline", "x"),
    "minutes": ("wall time (min)", "min"),
}


def headline_margin(report: dict[str, Any], claims: DemoClaims = DEMO_CLAIMS) -> float:
    """How far the headline claim is met, in points: the most accurate budget within the MACs
    limit (40 % of the baseline's) minus the least accuracy the claim allows (the baseline's less
    1 point); below 0 where it is not met. The operating point itself says nothing of the margin:
    it is the *cheapest* budget within 1 point, so its accuracy sits near the limit by choice."""
    base = report["baseline"]
    allowed = [b["accuracy"] for b in report["budgets"] if b["avg_macs"] <= claims.macs_fraction * base["macs"]]
    best = max(allowed, default=0.0)
    return 100 * (best - (base["test_accuracy"] - ACCURACY_MARGIN))


def headline(report: dict[str, Any], *, seed: int, threads: int, seconds: float) -> dict[str, Any]:
    """One run's row of the spread table from its report (report.json)."""
    acc = report["gfnet"]["anytime_accuracy"]
    learned = report["random_policy"]["policy_anytime_accuracy"]
    rnd = report["random_policy"]["anytime_accuracy"]
    op = report["operating_point"]
    step2 = 1 if len(acc) > 1 else 0
    return {
        "seed": seed, "threads": threads,
        "baseline": report["baseline"]["test_accuracy"], "glance": acc[0], "step2": acc[step2], "last_step": acc[-1],
        "random_step2": rnd[step2], "policy_gain": 100 * (learned[step2] - rnd[step2]),
        # the operating point: the cheapest budget within 1 point (else the most accurate one)
        "best_budget_accuracy": op["accuracy"], "best_budget_macs": op["macs_fraction"],
        "best_budget_meets_accuracy": bool(op["meets_accuracy"]),
        "headline_margin": headline_margin(report),
        "speedup": report["speedup_vs_baseline"], "minutes": seconds / 60,
        "claims": dict(report["claims"]), "claims_met": all(report["claims"].values()),
        "warnings": list(report.get("training", {}).get("warnings", [])),
    }


def spread(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """min / median / max of every headline figure over the runs."""
    return {k: {"min": min(r[k] for r in rows), "median": statistics.median(r[k] for r in rows),
                "max": max(r[k] for r in rows)} for k in HEADLINE}


def _fmt(value: float, kind: str) -> str:
    return {"pct": f"{100 * value:.2f} %", "pts": f"{value:+.1f}", "x": f"{value:.2f}x",
            "min": f"{value:.1f}"}[kind]


def spread_markdown(rows: Sequence[dict[str, Any]], title: str) -> str:
    """The per-run table, then min / median / max of each figure, then which claims failed where."""
    keys = list(HEADLINE)
    lines = [f"# {title}", "",
             f"{len(rows)} run(s) of `gfnet demo`; every figure on the test split, as in each run's report.md "
             "(RUN/seed*-threads*/report.md).", "",
             "| seed | threads | " + " | ".join(HEADLINE[k][0] for k in keys) + " | all claims met |",
             "|---:|---:|" + "---:|" * len(keys) + "---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['threads']} | " + " | ".join(_fmt(r[k], HEADLINE[k][1]) for k in keys)
                     + f" | {'yes' if r['claims_met'] else '**no**'} |")
    lines += ["", "| figure | min | median | max |", "|---|---:|---:|---:|"]
    for k, s in spread(rows).items():
        name, kind = HEADLINE[k]
        lines.append(f"| {name} | {_fmt(s['min'], kind)} | {_fmt(s['median'], kind)} | {_fmt(s['max'], kind)} |")
    met = sum(r["claims_met"] for r in rows)
    lines += ["", f"Every claim met in {met} of {len(rows)} run(s)."]
    for r in rows:
        failed = [k for k, ok in r["claims"].items() if not ok]
        if failed:
            lines.append(f"- seed {r['seed']}, {r['threads']} thread(s): NOT met: {', '.join(failed)}")
        for w in r["warnings"]:
            lines.append(f"- seed {r['seed']}, {r['threads']} thread(s): warning: {w}")
    return "\n".join(lines) + "\n"


def run_demo_seeds(cfg: Config, out: str | Path, seeds: Sequence[int], threads: Sequence[int], *,
                   images: int = 8, passes: int = 3, collect_only: bool = False,
                   log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The demo once per (seed, thread count), each into ``out/seed{s}-threads{n}`` (resumable
    like a single demo), then ``out/spread.md`` and ``out/spread.json``: each run's headline
    figures and their min / median / max (rewritten after every run). Returns the rows.

    collect_only: train nothing; write the spread of the runs already finished (their
    report.json newer than their baseline and last stage), e.g. after running the seeds as
    separate processes or machines (``gfnet demo --out OUT/seed1-threads2 --seed 1 --set
    run.threads=2``); the runs not finished are listed as missing."""
    say = log or (lambda _msg: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    missing: list[str] = []
    for seed in seeds:
        for n in threads:
            run_dir = out / f"seed{seed}-threads{n}"
            if collect_only:
                report = _finished_report(run_dir)
                if report is None:
                    say(f"not finished, left out: {run_dir}")
                    missing.append(run_dir.name)
                    continue
            else:
                run_cfg = cfg.copy()
                run_cfg.run.seed, run_cfg.run.threads = int(seed), int(n)
                say(f"\n=== gfnet demo: seed {seed}, {n} thread(s) -> {run_dir} ===")
                report = run_demo(run_cfg, run_dir, images=images, passes=passes, log=log)
            rows.append(headline(report, seed=int(seed), threads=int(n), seconds=wall_time(run_dir)))
            _write_spread(out, rows, missing, cfg.preset)
    if not rows:
        raise GFNetError(f"no finished demo run under {out} (seed*-threads*/report.json)")
    _write_spread(out, rows, missing, cfg.preset)
    say(f"\nwrote {out / 'spread.md'}")
    return rows


def _write_spread(out: Path, rows: list[dict[str, Any]], missing: list[str], preset: str) -> None:
    table = {"runs": rows, "spread": spread(rows), "missing": missing}
    write_atomic(out / "spread.json", json.dumps(table, indent=2).encode())
    md = spread_markdown(rows, f"gfnet demo over seeds and thread counts: {preset}")
    if missing:
        md += f"\nNot finished, left out: {', '.join(missing)}.\n"
    write_atomic(out / "spread.md", md.encode())


__all__ = ["HEADLINE", "headline", "run_demo", "run_demo_seeds", "spread", "spread_markdown", "wall_time"]
