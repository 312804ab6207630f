"""Budgeted evaluation of a trained run: what ``gfnet eval`` does, callable from Python.

    summary = evaluate_run("runs/digits", budgets=[1, 20, 39], log=print)

1. exit thresholds for every budget (1 .. 39) are calibrated on the calibration split
   (``data.calibration_images.calibration_split``: never the test images) or read from the checkpoint,
   where an earlier evaluation (or ``gfnet import-official``: the release's thresholds) stored
   them, and stored in the checkpoint when the outputs go to the run's own folder (no ``out``, or
   an ``out`` inside the checkpoint's folder; never through a symbolic link to the checkpoint):
   an evaluation writing elsewhere changes nothing outside ``out``, and its thresholds are in
   ``OUT/eval.json``; eval.json records which images set them;
2. each asked budget (and each target average MACs) is evaluated on the test split, by the
   dynamic engine or, with ``simulate=True``, by simulating exits on all-step logits;
3. ``OUT/eval.json`` (the summary returned), ``OUT/eval.csv`` (a row per budget) and
   ``OUT/eval.png`` (accuracy against average MACs) are written. For an imported official
   checkpoint the release's own per-step MACs and accuracy go beside ours (``official``).
   They are written as ``gfnet.files.OutputFolder`` writes (atomically, never through a link,
   never over a file an evaluation did not write unless ``force=True``).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from .checkpoint import load_baseline_checkpoint, load_checkpoint_model, resolve_checkpoint
from .config import Config
from .data import build_datasets
from .data.calibration_images import CalibrationSplit, calibration_split, val_is_test
from .device import pick_device, set_threads
from .errors import GFNetError
from .exits import (
    NUM_BUDGETS,
    BudgetPoint,
    Calibration,
    budget_q,
    calibrate,
    store_calibration,
    stored_calibration,
    thresholds_for_macs,
)
from .files import OutputFolder
from .flops import average_macs, count_step_flops, format_table, require_fvcore
from .inference import collect_anytime, exit_counts_of, per_step_accuracy, simulate_exits
from .precision import InferenceFormat, precision_note

Log = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


def eval_loader(ds: Dataset, batch_size: int) -> DataLoader:
    """Evaluation order: the split as it is, no shuffling, in this process."""
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)


# ---------------------------------------------------------------------- budgeted evaluation
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


def _usable_calibration(ck: dict[str, Any], cfg: Config, step_macs: list[float],
                        budgets: Sequence[int] | None, log: Log, precision: str = "fp32") -> Calibration | None:
    """The thresholds an earlier evaluation (or the import of an official checkpoint) stored in
    ``ck``, unless they were calibrated for other step costs (another model), miss one of
    ``budgets``, or were set on a val split that is also the test split (checkpoints from before
    calibration splits were recorded). Only thresholds calibrated in ``precision`` count."""
    cal = stored_calibration(ck, precision)
    if cal is None:
        return None
    if [round(m) for m in cal.step_macs] != [round(m) for m in step_macs]:
        return None
    have = {p.budget for p in cal.points}
    if any(b not in have for b in budgets or range(1, NUM_BUDGETS + 1)):
        return None
    if cal.split == "val" and not cal.details and val_is_test(cfg):
        log("the stored thresholds were calibrated on the val split, which is the test split here: "
            "calibrating again on other images")
        return None
    return cal


def evaluate_run(checkpoint: str | Path, *, out: str | Path | None = None, data_root: str | None = None,
                 device: str | None = None, budgets: Sequence[int] | None = None,
                 target_macs: Sequence[float] = (), recalibrate: bool = False, store: bool = True,
                 simulate: bool = False, batch_size: int | None = None, max_batches: int = 0,
                 baseline: str | Path | None = None, baseline_acc: float | None = None,
                 force: bool = False, log: Log | None = None, precision: str | None = None,
                 layout: str | None = None) -> dict[str, Any]:
    """Evaluate the checkpoint (file or run folder) at ``budgets`` (None: all 39) and at each
    target average of ``target_macs`` MACs per image; write eval.json, eval.csv and eval.png
    into ``out`` (default: the checkpoint's folder / eval) and return the summary.

    data_root: where the data is now, if it moved since training. device: auto | cpu | cuda |
    cuda:N. recalibrate: ignore stored thresholds; store: write new ones into the checkpoint
    (only when ``out`` is the run's folder, see the module docstring). force: replace files in
    ``out`` that an evaluation did not write.
    baseline: a finished static baseline checkpoint, plotted at its accuracy and MACs (or give
    ``baseline_acc``, plotted at the backbone's MACs on the full image). max_batches: evaluate at
    most this many batches per split (0 = all). log: receives progress and result lines.
    precision, layout: the inference format (gfnet.precision; default the config's
    ``run.precision`` and ``run.layout``): the thresholds are calibrated, stored and used per
    precision.
    """
    log = log or _quiet
    require_fvcore("gfnet eval (it calibrates exits on MACs)")  # before any loading
    for b in budgets or ():
        budget_q(b)  # ExitRuleError: out of range
    baseline_macs = None
    if baseline is not None:
        bck = load_baseline_checkpoint(baseline)
        baseline_acc, baseline_macs = float(bck["test_accuracy"]), float(bck["macs"])
    ck_path = resolve_checkpoint(checkpoint)
    dev = pick_device(device)
    model, cfg, ck = load_checkpoint_model(ck_path, dev, {"data.root": data_root} if data_root else None)
    precision = precision or cfg.run.precision
    fmt = InferenceFormat.choose(precision, dev, layout or cfg.run.layout, fold_batch_norm=True)
    set_threads(cfg.run.threads)
    sf = count_step_flops(model)
    step_macs = [float(m) for m in sf.macs]
    note = precision_note(precision, dev)
    if note:
        log(f"warning: {note}")
    model.set_inference_format(fmt)  # after counting: fvcore traces the model as it is
    for t in target_macs:
        if not (step_macs[0] <= t <= sum(step_macs)):
            raise GFNetError(f"--target-macs {t / 1e6:g} M is out of range: between the glance alone "
                             f"({step_macs[0] / 1e6:.3f} M) and all steps ({sum(step_macs) / 1e6:.3f} M)")
    ds = build_datasets(cfg, ("test",))
    bs = batch_size or cfg.run.eval_batch_size or cfg.optim.batch_size
    out_dir = Path(out) if out else ck_path.parent / "eval"
    folder = OutputFolder(out_dir, force=force, command="gfnet eval")
    for name in OUTPUT_NAMES:
        folder.target(name)  # refuse before the work, not after it
    store_here = store and _stores_in_checkpoint(ck_path, out_dir, log)

    def calibration_logits() -> tuple[torch.Tensor, CalibrationSplit]:
        split = calibration_split(cfg)  # never the test images
        return collect_anytime(model, eval_loader(split.dataset, bs), device=dev, max_batches=max_batches)[0], split

    cal = None if recalibrate else _usable_calibration(ck, cfg, step_macs, budgets, log, precision)
    logits = None
    if cal is None:
        logits, split = calibration_logits()
        # all 39 budgets: cheap once the logits are there
        cal = calibrate(logits, step_macs, split=split.split, details=split.details)
        if store_here:
            store_calibration(ck_path, cal, ck, precision=precision)
        log(f"calibrated {len(cal.points)} budgets in {precision} on {split.describe()}"
            + (f" (stored in {ck_path})" if store_here else ""))
    else:
        what = cal.details.get("source") or f"{cal.samples} {cal.split} images"
        log(f"using the thresholds stored in {ck_path} ({len(cal.points)} budgets, {what})")
    points = [p for p in cal.points if budgets is None or p.budget in budgets]
    if target_macs:
        logits = logits if logits is not None else calibration_logits()[0]
        points += [thresholds_for_macs(logits, step_macs, t) for t in target_macs]

    test_loader = eval_loader(ds["test"], bs)
    test_logits, labels, _ = collect_anytime(model, test_loader, device=dev, max_batches=max_batches)
    step_acc = per_step_accuracy(test_logits, labels)
    if simulate:
        results = evaluate_simulated(test_logits, labels, cal, points)
    else:
        results = evaluate_dynamic(model, test_loader, cal, points, device=dev, max_batches=max_batches)

    rows = [r.to_row() for r in results]
    plotted = None
    if baseline_acc is not None:
        plotted = (baseline_macs if baseline_macs is not None else float(sf.static_macs), baseline_acc)
    summary = {
        "checkpoint": str(ck_path), "preset": cfg.preset, "engine": "simulated" if simulate else "dynamic",
        "precision": precision, "layout": fmt.layout,
        "test_samples": int(labels.numel()), "step_macs": step_macs, "step_flops": [2 * m for m in step_macs],
        "static_macs": sf.static_macs, "anytime_accuracy": step_acc, "calibration_split": cal.split,
        "calibration": {"split": cal.split, "samples": cal.samples, **cal.details},
        "baseline_accuracy": baseline_acc, "baseline_macs": plotted[0] if plotted else None,
        "budgets": rows,
    }
    official = ck.get("official")
    if official:  # an imported official checkpoint: the release's figures beside ours
        from .official.figures import comparison_rows

        summary["official"] = {"model_name": official.get("model_name"),
                               "per_step": comparison_rows(official, step_macs, step_acc)}
    folder.write_text("eval.json", json.dumps(summary, indent=2))
    folder.write_text("eval.csv", _csv_text(rows, len(step_macs)))
    from .viz import plot_accuracy_vs_flops

    png = io.BytesIO()
    plot_accuracy_vs_flops(png, [r["avg_macs"] for r in rows], [r["accuracy"] for r in rows],
                           step_macs_cum=sf.cumulative_macs, step_acc=step_acc, baseline=plotted,
                           title=f"GFNet {cfg.preset}: accuracy vs average MACs")
    folder.write("eval.png", png.getbuffer())
    log(format_table(sf, f"per-step cost ({cfg.preset})"))
    if official:
        from .official.figures import format_comparison

        log(format_comparison(official, step_macs, step_acc))
    for line in summary_lines(summary):
        log(line)
    log(f"wrote {out_dir / 'eval.json'}, {out_dir / 'eval.csv'}, {out_dir / 'eval.png'}")
    return summary


OUTPUT_NAMES = ("eval.json", "eval.csv", "eval.png")


def _stores_in_checkpoint(ck_path: Path, out_dir: Path, log: Log) -> bool:
    """Whether this evaluation may write its thresholds into the checkpoint: only when its
    outputs go to the checkpoint's own folder, and never through a link (that would replace the
    link, or write into a file elsewhere)."""
    run = ck_path.parent.resolve()
    out_resolved = out_dir.resolve()
    if out_resolved != run and run not in out_resolved.parents:
        log(f"the thresholds are not stored in {ck_path} (--out is outside its folder; they are in "
            f"{out_dir / 'eval.json'}): evaluate without --out to store them")
        return False
    if ck_path.is_symlink():
        log(f"the thresholds are not stored in {ck_path}: it is a symbolic link (evaluate the file it "
            "points to, in its own folder, to store them)")
        return False
    return True


def _csv_text(rows: list[dict[str, Any]], steps: int) -> str:
    """eval.csv: a row per budget (thresholds and exit counts per step)."""
    f = io.StringIO(newline="")
    w = csv.writer(f)
    w.writerow(["budget", "q", "accuracy", "avg_macs", "avg_flops"]
               + [f"thr{k}" for k in range(1, steps)] + [f"exit{k}" for k in range(1, steps + 1)])
    for r in rows:
        w.writerow([r["budget"] if r["budget"] is not None else "", f"{r['q']:.6g}", f"{r['accuracy']:.6f}",
                    f"{r['avg_macs']:.1f}", f"{r['avg_flops']:.1f}"]
                   + ["" if t is None else f"{t:.6f}" for t in r["thresholds"]] + r["exit_counts"])
    return f.getvalue()


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The anytime accuracy and the budget table of an evaluation summary, as text lines."""
    lines = ["anytime accuracy per step: " + " ".join(f"{a:.4f}" for a in summary["anytime_accuracy"]),
             f"{'budget':>6} {'q':>6} {'acc':>7} {'avg MACs (M)':>13} {'avg FLOPs (M)':>14}  exits per step"]
    for r in summary["budgets"]:
        b = "macs" if r["budget"] is None else str(r["budget"])
        lines.append(f"{b:>6} {r['q']:>6.3g} {r['accuracy']:>7.4f} {r['avg_macs'] / 1e6:>13.3f} "
                     f"{r['avg_flops'] / 1e6:>14.3f}  {r['exit_counts']}")
    return lines


__all__ = ["BudgetResult", "eval_loader", "evaluate_dynamic", "evaluate_run", "evaluate_simulated", "summary_lines"]
