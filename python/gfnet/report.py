"""``gfnet report RUN``: what a trained run shows, in one markdown page.

Reads the run's budgeted evaluation (``RUN/eval/eval.json`` from ``gfnet eval RUN --baseline
RUN/baseline.pt``), its GFNet checkpoint and its static baseline (``RUN/baseline.pt`` from
``gfnet train --baseline``), then

1. picks the operating point: the cheapest budget whose test accuracy is within
   ``ACCURACY_MARGIN`` of the baseline's;
2. times, on the same test images, the static baseline, GFNet running all T steps on every
   image, and GFNet's dynamic early-exit engine at the operating point's thresholds (and where
   it first matches the baseline), at several batch sizes: median of a few full passes after a
   warm-up batch. Each engine is judged at its best batch size, because the best batch differs
   (a large batch of full-size images can spill out of the caches);
3. asks whether looking matters: every step's test accuracy with uniformly random focus
   locations beside the learned policy's and, where the data set knows where its object is
   (a data set's ``object_box(i)``: the cluttered digits' digit), how often each one's first focus patch holds at least
   half of it;
4. draws the pictures ``gfnet predict`` draws of the glance and the chosen patches for a
   handful of test images (saved as PNG files and read back): about half of them images that
   exit at the glance, the rest images that needed to look;
5. writes ``RUN/report.md`` (tables, the plot, the pictures, and the facts stated without
   targets, since what is good enough depends on the user's data; a caller with targets passes
   them as ``claims``, as ``gfnet demo`` does with its own) and
   ``RUN/report.json`` (the same numbers for machines); its pictures go to ``RUN/report/``
   (``accuracy_vs_flops.png``, ``samples/``, ``patches/``).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from .data.calibration_images import describe_calibration
from .errors import GFNetError
from .files import write_atomic
from .models.prepack import networks_for_inference
from .precision import InferenceFormat

ACCURACY_MARGIN = 0.01  # "reaches the baseline's accuracy": within 1 point
OBJECT_HIT_MIN_FRACTION = 0.5  # a patch "holds the object" if it holds this much of its box
RANDOM_LOCATIONS_SEED = 4242  # + run.seed: the random-locations pass is repeatable
# the baseline's test accuracy is stored rounded to 5 decimals (the trainer's evaluation), the
# budgets' is exact: 22 of 24 images is 0.91667 against 0.916666..., and must count as reached
ROUNDING = 5e-6


class Claims(Protocol):
    """Targets a report is checked against, given by the caller that sets them (the demo's:
    ``gfnet.demo.DEMO_CLAIMS``); without them a report states the facts alone."""

    macs_fraction: float | None  # a MACs limit (of the baseline's) drawn on the plot

    def check(self, report: dict[str, Any]) -> dict[str, bool]:
        """Each claim's name -> whether the finished report meets it."""

    def markdown(self, report: dict[str, Any]) -> list[str]:
        """The report's section on the claims (report["claims"] holds check's answer)."""

    def reproduce(self, report: dict[str, Any]) -> list[str]:
        """The commands that make the run again."""


@dataclass
class EngineTiming:
    engine: str
    batch_size: int
    images: int
    seconds: float  # median over the timed passes of one pass over all images
    passes: list[float]
    accuracy: float  # on the timed images
    avg_macs: float  # per image (dynamic: of the realised exits)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


def _cheapest_reaching(rows: list[dict[str, Any]], accuracy: float) -> dict[str, Any] | None:
    """The budget row with the fewest average MACs whose accuracy is at least ``accuracy``."""
    good = [r for r in rows if r["accuracy"] >= accuracy - ROUNDING]
    return min(good, key=lambda r: r["avg_macs"]) if good else None


def _exit_thresholds(row: dict[str, Any]) -> list[float]:
    """A budget row's thresholds for the engines: eval.json writes a step nobody exits at (an
    infinite threshold) as null."""
    return [math.inf if t is None else float(t) for t in row["thresholds"]]


def pick_operating_point(rows: list[dict[str, Any]], baseline_acc: float, baseline_macs: float) -> dict[str, Any]:
    """The cheapest budget row within ACCURACY_MARGIN of the baseline's accuracy; if none is,
    the most accurate row. Adds ``meets_accuracy`` and ``macs_fraction``."""
    if not rows:
        raise GFNetError("the evaluation has no budget rows")
    close = _cheapest_reaching(rows, baseline_acc - ACCURACY_MARGIN)
    best = close if close is not None else max(rows, key=lambda r: r["accuracy"])
    return {**best, "meets_accuracy": close is not None, "macs_fraction": best["avg_macs"] / baseline_macs}


def matching_point(rows: list[dict[str, Any]], baseline_acc: float, baseline_macs: float) -> dict[str, Any] | None:
    """The cheapest budget row at least as accurate as the baseline, or None."""
    best = _cheapest_reaching(rows, baseline_acc)
    return None if best is None else {**best, "macs_fraction": best["avg_macs"] / baseline_macs}


def _test_tensors(ds, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``limit`` test images and labels, loaded up front so no timing includes data."""
    from torch.utils.data import DataLoader

    xs, ys, n = [], [], 0
    for x, y in DataLoader(ds, batch_size=256, shuffle=False):
        xs.append(x)
        ys.append(y)
        n += y.numel()
        if n >= limit:
            break
    return torch.cat(xs)[:limit], torch.cat(ys)[:limit]


def fraction_holding(patches: torch.Tensor, objects: torch.Tensor,
                     min_fraction: float = OBJECT_HIT_MIN_FRACTION) -> float:
    """The fraction of (x1, y1, x2, y2) ``patches`` holding at least ``min_fraction`` of the
    area of their row's ``objects`` box."""
    w = (torch.minimum(patches[:, 2], objects[:, 2]) - torch.maximum(patches[:, 0], objects[:, 0])).clamp(min=0)
    h = (torch.minimum(patches[:, 3], objects[:, 3]) - torch.maximum(patches[:, 1], objects[:, 1])).clamp(min=0)
    area = (objects[:, 2] - objects[:, 0]) * (objects[:, 3] - objects[:, 1])
    return float((w * h >= min_fraction * area).double().mean())


def looking_matters(model, images: torch.Tensor, labels: torch.Tensor, object_boxes: torch.Tensor | None, *,
                    batch_size: int, device: torch.device, seed: int) -> tuple[dict[str, Any], torch.Tensor]:
    """The learned policy against uniformly random focus locations on the same images: each
    one's accuracy per step and, given each image's object box (a data set's ``object_box``), how
    often its first focus patch (step 2) holds at least half of it. Returns (the report's numbers, the learned policy's
    (T, N, K) logits). On the whole test split, ``policy_anytime_accuracy`` is gfnet eval's
    ``anytime_accuracy``; on its first ``max_images`` it is what the random one is compared to."""
    from torch.utils.data import DataLoader, TensorDataset

    from .inference import collect_anytime, per_step_accuracy

    gen = torch.Generator(device=device).manual_seed(seed)
    loader = DataLoader(TensorDataset(images, labels), batch_size=batch_size)
    runs = {policy: collect_anytime(model, loader, device=device, policy=policy,
                                    generator=gen if policy == "random" else None)
            for policy in ("mean", "random")}
    out: dict[str, Any] = {
        "random_policy": {"anytime_accuracy": per_step_accuracy(runs["random"][0], labels),
                          "policy_anytime_accuracy": per_step_accuracy(runs["mean"][0], labels),
                          "test_samples": int(labels.numel()), "seed": seed},
        "object_in_first_patch": None,
    }
    if object_boxes is not None and model.max_steps > 1:
        out["object_in_first_patch"] = {
            "policy": fraction_holding(runs["mean"][2][:, 1], object_boxes),
            "random": fraction_holding(runs["random"][2][:, 1], object_boxes),
            "min_fraction_of_object": OBJECT_HIT_MIN_FRACTION, "test_samples": int(labels.numel()),
        }
    return out, runs["mean"][0]


def pick_samples(exit_step: torch.Tensor, n: int) -> list[int]:
    """``n`` image indices to draw: half of them (rounded down) exiting at the glance, the rest
    needing to look, taken from the later exit steps in turn; the first of each kind in index
    order, and where one kind runs short the other fills in."""
    T = int(exit_step.max()) if exit_step.numel() else 1
    by_step = [(exit_step == k).nonzero().flatten().tolist() for k in range(1, T + 1)]
    glance = by_step[0][:n // 2]
    later, looked = [list(reversed(idx)) for idx in by_step[1:]], []
    while len(looked) < n - len(glance) and any(later):
        for idx in later:
            if idx and len(looked) < n - len(glance):
                looked.append(idx.pop())
    glance = by_step[0][:n - len(looked)]
    return sorted(glance + looked)


def time_engines(engines: list[tuple[str, Callable[[torch.Tensor], tuple[torch.Tensor, float]]]],
                 images: torch.Tensor, labels: torch.Tensor, batch_size: int, passes: int,
                 device: torch.device) -> list[EngineTiming]:
    """Each engine fn(batch) -> (predictions, MACs spent on the batch) runs a warm-up batch, then
    ``passes`` timed passes over all images, the engines taking turns pass by pass so that a
    slow spell of the machine hits them alike. Median pass time; accuracy and MACs of a pass."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    batches = [(images[i:i + batch_size].to(device), labels[i:i + batch_size])
               for i in range(0, images.shape[0], batch_size)]
    for _name, fn in engines:
        fn(batches[0][0])
    times: list[list[float]] = [[] for _ in engines]
    stats: list[tuple[int, float]] = [(0, 0.0)] * len(engines)
    for _ in range(passes):
        for e, (_name, fn) in enumerate(engines):
            preds, macs = [], 0.0
            sync()
            t0 = time.perf_counter()
            for x, _y in batches:
                p, m = fn(x)
                preds.append(p)
                macs += m
            sync()
            times[e].append(time.perf_counter() - t0)
            stats[e] = (sum(int((p.cpu() == y).sum()) for p, (_x, y) in zip(preds, batches)), macs)
    n = images.shape[0]
    return [EngineTiming(name, batch_size, n, statistics.median(ts), [round(t, 4) for t in ts], correct / n, macs / n)
            for (name, _fn), ts, (correct, macs) in zip(engines, times, stats)]


def _predict_samples(model, cfg, images: torch.Tensor, labels: torch.Tensor, indices: list[int], thresholds,
                     out: Path) -> list[dict]:
    """Save the test images ``indices`` as PNG files, read them back (``read_image`` with nothing
    cropped: the test images already have the model's size, so they must come back pixel for
    pixel) and draw the pictures of their glance and focus patches that ``gfnet predict`` draws."""
    import numpy as np
    from PIL import Image

    from .data import read_image
    from .viz import predict_pictures

    src = out / "samples"
    src.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in indices:
        img = images[i]
        a = img.permute(1, 2, 0).numpy() if img.shape[0] == 3 else img[0].numpy()
        path = src / f"test_{i:04d}_label{int(labels[i])}.png"
        Image.fromarray(np.ascontiguousarray(a.astype(np.uint8))).save(path)
        paths.append(path)
    m = cfg.model
    read = torch.stack([read_image(str(p), m.in_channels, m.image_size) for p in paths])
    if not torch.equal(read, images[indices]):
        raise GFNetError("test images did not survive the PNG round trip")  # lossless: should never happen
    device = next(model.parameters()).device
    rows = predict_pictures(model, read.to(device), [str(p) for p in paths], thresholds, out / "patches")
    for row, i in zip(rows, indices):
        row["label"] = int(labels[i])
        row["test_index"] = i
    return rows


def build_report(run_dir: str | Path, *, baseline: str | Path | None = None, eval_json: str | Path | None = None,
                 out: str | Path | None = None, device: torch.device | str = "cpu", num_images: int = 8,
                 passes: int = 3, batch_sizes: tuple[int, ...] = (16, 64, 128), max_images: int = 2000,
                 threads: int | None = None, progress: bool = True, claims: Claims | None = None
                 ) -> dict[str, Any]:
    """The report of a run (module docstring); ``claims``: targets to check it against and
    state (report["claims"]), else the facts alone."""
    from .data import build_datasets
    from .flops import average_macs
    from .checkpoint import load_baseline_model, load_checkpoint_model, resolve_checkpoint
    from .inference import anytime_inference, dynamic_inference, simulate_exits

    run = Path(run_dir)
    eval_path = Path(eval_json) if eval_json else run / "eval" / "eval.json"
    if not eval_path.is_file():
        raise GFNetError(f"{str(eval_path)!r} does not exist: run `gfnet eval {run} --baseline "
                         f"{run / 'baseline.pt'}` first")
    ev = json.loads(eval_path.read_text())
    base_path = Path(baseline) if baseline else run / "baseline.pt"
    if not base_path.is_file():
        raise GFNetError(f"no static baseline at {str(base_path)!r}: run `gfnet train --baseline --out {run}` "
                         "(or pass --baseline CKPT)")
    device = torch.device(device)
    ck_path = resolve_checkpoint(run)
    model, cfg, ck = load_checkpoint_model(ck_path, device)
    static, bcfg, bck = load_baseline_model(base_path, device)
    if (bcfg.model.image_size, bcfg.model.num_classes) != (cfg.model.image_size, cfg.model.num_classes):
        raise GFNetError(f"baseline {str(base_path)!r} is for {bcfg.model.image_size}-pixel images and "
                         f"{bcfg.model.num_classes} classes, the GFNet run for {cfg.model.image_size} and "
                         f"{cfg.model.num_classes}")
    # every engine runs in the format the thresholds were calibrated in (eval.json's precision) and
    # the run's layout, the static baseline too: like is timed against like
    fmt = InferenceFormat.choose(ev.get("precision", "fp32"), device, cfg.run.layout, fold_batch_norm=True)
    model.set_inference_format(fmt)
    networks_for_inference(static.eval(), fmt)
    nthreads = threads if threads is not None else (cfg.run.threads or torch.get_num_threads())
    torch.set_num_threads(nthreads)
    base_acc, base_macs = float(bck["test_accuracy"]), float(bck["macs"])
    step_macs = [float(m) for m in ev["step_macs"]]
    T = len(step_macs)
    op = pick_operating_point(ev["budgets"], base_acc, base_macs)
    thr = _exit_thresholds(op)
    match = matching_point(ev["budgets"], base_acc, base_macs)

    out_dir = Path(out) if out else run  # report.md and report.json
    assets = out_dir / "report"  # its pictures
    assets.mkdir(parents=True, exist_ok=True)
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)

    test_set = build_datasets(cfg, ("test",))["test"]
    images, labels = _test_tensors(test_set, max_images)
    all_macs = sum(step_macs)

    def run_static(x):
        with torch.inference_mode(), fmt.autocast(device.type):
            return static(x).argmax(1), base_macs * x.shape[0]

    def run_all_steps(x):
        return anytime_inference(model, x).logits[-1].argmax(1), all_macs * x.shape[0]

    def run_dynamic(thresholds):
        def run(x):
            r = dynamic_inference(model, x, thresholds)
            return r.prediction, average_macs(r.exit_counts, step_macs) * x.shape[0]

        return run

    engines = [("static baseline", run_static), (f"GFNet, all {T} steps", run_all_steps),
               (f"GFNet dynamic, budget {op['budget']}", run_dynamic(thr))]
    if match is not None and match["budget"] != op["budget"]:  # also where it matches the baseline
        engines.append((f"GFNet dynamic, budget {match['budget']}",
                        run_dynamic(_exit_thresholds(match))))
    say(f"report: timing {len(engines)} engines on {images.shape[0]} test images, batches of "
        f"{', '.join(map(str, batch_sizes))}, {passes} passes each, {nthreads} thread(s)")
    timings: list[EngineTiming] = []
    for bs in batch_sizes:
        for t in time_engines(engines, images, labels, bs, passes, device):
            say(f"report: {t.engine}, batch {bs}: {t.images_per_s:.0f} images/s (median pass {t.seconds:.2f} s)")
            timings.append(t)
    best = [max((t for t in timings if t.engine == name), key=lambda t: t.images_per_s) for name, _fn in engines]
    static_t, all_t, dyn_t = best[:3]
    speedup = dyn_t.images_per_s / static_t.images_per_s

    say(f"report: learned focus locations against random ones on {images.shape[0]} test images")
    boxes_of = getattr(test_set, "object_box", None)  # a data set that knows where its object is
    object_boxes = (torch.tensor([boxes_of(i) for i in range(images.shape[0])], dtype=torch.float32)
                   if boxes_of is not None else None)
    looking, policy_logits = looking_matters(
        model, images, labels, object_boxes, device=device, seed=cfg.run.seed + RANDOM_LOCATIONS_SEED,
        batch_size=cfg.run.eval_batch_size or cfg.optim.batch_size)
    random_acc = looking["random_policy"]["anytime_accuracy"]

    say(f"report: pictures of {num_images} test images")
    exit_step, _ = simulate_exits(policy_logits, thr)  # where each test image exits at the operating point
    picked = pick_samples(exit_step, num_images)
    samples = _predict_samples(model, cfg, images, labels, picked, thr, assets) if num_images else []

    from .viz import plot_accuracy_vs_flops

    rows = ev["budgets"]
    cum = [sum(step_macs[:k]) for k in range(1, T + 1)]
    plot_path = plot_accuracy_vs_flops(
        assets / "accuracy_vs_flops.png", [r["avg_macs"] for r in rows], [r["accuracy"] for r in rows],
        step_macs_cum=cum, step_acc=ev["anytime_accuracy"], random_step_acc=random_acc, baseline=(base_macs, base_acc),
        highlight=(op["avg_macs"], op["accuracy"], f"operating point (budget {op['budget']})"),
        macs_limit=((claims.macs_fraction * base_macs, f"{claims.macs_fraction:.0%} of the baseline's MACs")
                    if claims is not None and claims.macs_fraction is not None else None),
        title=f"GFNet {cfg.preset} vs its static baseline")
    from .train.curves import curve_warnings, read_metrics, stage_curves
    from .viz import plot_training_curves

    curves = stage_curves(read_metrics(run / "metrics.jsonl"))
    curves_path = (plot_training_curves(assets / "training_curves.png", curves,
                                        title=f"Training curves: {cfg.preset}") if curves else None)
    training = {
        "curves": [{"stage": c.stage, "label": c.label, "epochs": c.epochs, "loss": c.loss,
                    "val_mode": c.val_mode, "val_accuracy": c.val_accuracy} for c in curves],
        "warnings": [w for c in curves for w in curve_warnings(c, cfg.model.num_classes)],
        "plot": str(curves_path) if curves_path else None,
    }
    report = {
        "run": str(run), "checkpoint": str(ck_path), "baseline_checkpoint": str(base_path), "preset": cfg.preset,
        "data": {"dataset": cfg.data.dataset, "root": cfg.data.root,
                 "num_classes": cfg.model.num_classes, "class_names": ck.get("class_names"),
                 "in_channels": cfg.model.in_channels, "mean": list(cfg.model.mean),
                 "std": list(cfg.model.std)},
        "device": str(device), "threads": nthreads, "batch_sizes": list(batch_sizes), "passes": passes,
        "inference_format": {"precision": fmt.precision, "layout": fmt.layout},
        "torch": torch.__version__,
        "baseline": {"backbone": bcfg.model.backbone, "image_size": bcfg.model.image_size,
                     "test_accuracy": base_acc, "macs": base_macs},
        "gfnet": {"backbone": cfg.model.backbone, "patch_size": cfg.model.patch_size, "steps": T,
                  "init_from": cfg.model.init_from, "pretrained": cfg.model.pretrained,
                  "step_macs": step_macs, "anytime_accuracy": ev["anytime_accuracy"],
                  "test_samples": ev["test_samples"], "engine": ev["engine"],
                  # which images set the thresholds (eval.json from before the record: its split alone)
                  "calibration": ev.get("calibration") or {"split": ev.get("calibration_split", "val")}},
        "operating_point": op, "matching_point": match, "speedup_vs_baseline": speedup,
        "speedup_vs_all_steps": dyn_t.images_per_s / all_t.images_per_s,
        "throughput": [{**asdict(t), "images_per_s": t.images_per_s} for t in best],  # each at its best batch
        "throughput_by_batch": [{**asdict(t), "images_per_s": t.images_per_s} for t in timings],
        **looking,  # random_policy, object_in_first_patch
        "samples": samples, "budgets": rows, "training": training,
        "files": {"report": str(out_dir / "report.md"), "plot": str(plot_path),
                  "eval": str(eval_path)},
    }
    if claims is not None:
        report["claims"] = claims.check(report)
    # report.json last: a run folder with one holds a whole report (``gfnet demo`` reuses it)
    write_atomic(out_dir / "report.md", render_markdown(report, out_dir, claims).encode())
    write_atomic(out_dir / "report.json", json.dumps(report, indent=2).encode())
    say(f"report: wrote {out_dir / 'report.md'}")
    return report


def _format_text(r: dict[str, Any]) -> str:
    """The report's inference format in words (a report from before it was recorded: fp32, contiguous)."""
    f = r.get("inference_format") or {"precision": "fp32", "layout": "contiguous"}
    return f"{f['precision']}, {f['layout'].replace('_', ' ')}"


def pct(x: float) -> str:
    """A fraction as a percentage with two decimals ("98.40 %")."""
    return f"{100 * x:.2f} %"


def _rel(path: str | Path, base: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)


def _training_section(training: dict[str, Any] | None, out_dir: Path) -> list[str]:
    """The training curves (loss and validation accuracy per epoch and stage) and their warnings."""
    if not training or not training["curves"]:
        return []
    lines = ["## Training", "", f"![training curves]({_rel(training['plot'], out_dir)})", "",
             "| stage | epochs | last loss | validation accuracy per step at its last epoch (mode) |",
             "|---|---:|---:|---|"]
    for c in training["curves"]:
        acc = " / ".join(pct(a) for a in c["val_accuracy"][-1])
        lines.append(f"| {c['label']} | {c['epochs'][-1]} | {c['loss'][-1]:.4f} | {acc} ({c['val_mode']}) |")
    lines.append("")
    if training["warnings"]:
        lines += ["Warnings:", ""] + [f"- **warning:** {w}" for w in training["warnings"]] + [""]
    else:
        lines += ["Every stage ended above chance with its validation accuracy levelling off (no warnings).", ""]
    return lines


def _data_text(r: dict[str, Any]) -> str:
    """One sentence on the data: where, how many classes (named), channels, normalisation."""
    d = r.get("data")
    if not d:
        return ""
    names = d.get("class_names") or []
    shown = f" ({', '.join(names[:10])}{', ...' if len(names) > 10 else ''})" if names else ""
    where = f" `{d['root']}`" if d.get("root") else ""
    mean = ", ".join(f"{v:.3f}" for v in d["mean"])
    std = ", ".join(f"{v:.3f}" for v in d["std"])
    return (f"Data: {d['dataset']}{where}, {d['num_classes']} classes{shown}, "
            f"{d['in_channels']} channel(s) normalised with mean {mean} and std {std}.")


def _facts_section(r: dict[str, Any]) -> list[str]:
    """What a run shows, stated without targets (on a user's own data, what is good enough is
    the user's to say)."""
    b, g, op, mp = r["baseline"], r["gfnet"], r["operating_point"], r["matching_point"]
    T, acc, steps = g["steps"], g["anytime_accuracy"], g["step_macs"]
    rnd = r["random_policy"]["anytime_accuracy"]
    learned = r["random_policy"]["policy_anytime_accuracy"]
    every, base_macs = sum(steps), b["macs"]
    if op["meets_accuracy"]:
        point = ("The cheapest budget within 1 point of the baseline's accuracy is budget "
                 f"{op['budget']}")
    else:
        point = ("No budget comes within 1 point of the baseline's accuracy; the most accurate is "
                 f"budget {op['budget']}")
    if mp:
        matching = (f"The baseline's accuracy itself is reached at budget {mp['budget']}: "
                    f"{pct(mp['accuracy'])} at {mp['avg_macs'] / 1e6:.2f} M MACs "
                    f"({pct(mp['macs_fraction'])} of the baseline's).")
    else:
        matching = "No budget reaches the baseline's accuracy itself."
    lines = [
        "## Summary",
        "",
        f"- Static baseline: {pct(b['test_accuracy'])} at {base_macs / 1e6:.2f} M MACs per image.",
        f"- GFNet's glance alone: {pct(acc[0])} at {steps[0] / 1e6:.2f} M MACs "
        f"({pct(steps[0] / base_macs)} of the baseline's); all {T} steps: {pct(acc[-1])} at "
        f"{every / 1e6:.2f} M MACs ({pct(every / base_macs)}).",
        f"- {point}: {pct(op['accuracy'])} at {op['avg_macs'] / 1e6:.2f} M MACs "
        f"({pct(op['macs_fraction'])} of the baseline's), running {r['speedup_vs_baseline']:.2f}x "
        "the baseline's images per second.",
        f"- {matching}",
    ]
    if T > 1:
        lines.append("- Where it looks: at step 2 the learned focus locations give "
                     f"{pct(learned[1])}, uniformly random ones {pct(rnd[1])} "
                     f"({100 * (learned[1] - rnd[1]):+.1f} points).")
    warnings = (r.get("training") or {}).get("warnings") or []
    if warnings:
        lines.append(f"- Training left {len(warnings)} warning(s): see Training below.")
    return lines + [""]


def render_markdown(r: dict[str, Any], out_dir: Path, claims: Claims | None = None) -> str:
    b, g, op = r["baseline"], r["gfnet"], r["operating_point"]
    T = g["steps"]
    hit = r["object_in_first_patch"]
    rnd, learned = r["random_policy"]["anytime_accuracy"], r["random_policy"]["policy_anytime_accuracy"]
    targets = claims is not None and "claims" in r
    thr_txt = ", ".join(f"{t:.4f}" for t in op["thresholds"] if t is not None)
    data = r.get("data") or {}
    title = r["preset"] if targets or not data.get("root") else Path(data["root"]).name
    lines = [
        f"# GFNet report: `{title}`",
        "",
        f"GFNet ({g['backbone']}, glance and {T - 1} focus patches of {g['patch_size']} px) against the static "
        f"baseline: the same backbone run once on the full {b['image_size']} px image. Test split: "
        f"{g['test_samples']} images. MACs are multiply-adds per image counted by fvcore (FLOPs = 2 x MACs).",
        "",
        ("GFNet's two encoders started from the baseline's trained weights (`" + g["init_from"] + "`), as the "
         "paper's start from ImageNet-trained backbones: GFNet is built on top of the network a user already has."
         if g["init_from"] else
         "GFNet's encoders started from torchvision's pretrained weights." if g["pretrained"] else
         "GFNet and the baseline were both trained from random weights."),
        "",
    ]
    if data and not targets:
        lines += [_data_text(r), ""]
    lines += claims.markdown(r) if targets else _facts_section(r)
    lines += [
        "## Accuracy against average MACs",
        "",
        f"![accuracy vs MACs]({_rel(r['files']['plot'], out_dir)})",
        "",
        "| point | test accuracy | avg MACs (M) | avg FLOPs (M) | of baseline MACs | exits per step |",
        "|---|---:|---:|---:|---:|---|",
        f"| static baseline | {pct(b['test_accuracy'])} | {b['macs'] / 1e6:.2f} | "
        f"{2 * b['macs'] / 1e6:.2f} | 100 % | |",
    ]
    cum = 0.0
    for k, (m, a) in enumerate(zip(g["step_macs"], g["anytime_accuracy"]), start=1):
        cum += m
        lines.append(f"| GFNet, all images run {k} step{'s' if k > 1 else ''} | {pct(a)} | {cum / 1e6:.2f} | "
                     f"{2 * cum / 1e6:.2f} | {pct(cum / b['macs'])} | |")
    for row in sorted(r["budgets"], key=lambda x: x["avg_macs"]):
        name = f"budget {row['budget']}" if row["budget"] is not None else "MACs target"
        if row["budget"] == op["budget"] and row["avg_macs"] == op["avg_macs"]:  # op is a copy of its row
            name = f"**{name} (operating point)**"
        lines.append(f"| {name} | {pct(row['accuracy'])} | {row['avg_macs'] / 1e6:.2f} | "
                     f"{row['avg_flops'] / 1e6:.2f} | {pct(row['avg_macs'] / b['macs'])} | {row['exit_counts']} |")
    lines += [
        "",
        f"Budget rows come from `gfnet eval` ({g['engine']} engine): thresholds set on "
        f"{describe_calibration(g['calibration'])}; accuracy and realised exits on the test split.",
        "",
        "## Realised throughput",
        "",
        f"{r['throughput'][0]['images']} test images, device {r['device']}, {r['threads']} thread(s), torch "
        f"{r['torch']}, every network in {_format_text(r)}; images per second from the median of "
        f"{r['passes']} full passes after a warm-up batch, the engines taking turns. Each engine is compared "
        "at its best batch size.",
        "",
        "| engine | " + " | ".join(f"batch {b}" for b in r["batch_sizes"])
        + " | best | accuracy | avg MACs (M) | GMAC/s at best | vs baseline |",
        "|---|" + "---:|" * (len(r["batch_sizes"]) + 5),
    ]
    base_ips = r["throughput"][0]["images_per_s"]
    for t in r["throughput"]:
        by_bs = {x["batch_size"]: x["images_per_s"] for x in r["throughput_by_batch"] if x["engine"] == t["engine"]}
        lines.append(f"| {t['engine']} | " + " | ".join(f"{by_bs[b]:.0f}" for b in r["batch_sizes"])
                     + f" | **{t['images_per_s']:.0f}** (batch {t['batch_size']}) | {pct(t['accuracy'])} | "
                     f"{t['avg_macs'] / 1e6:.2f} | {t['images_per_s'] * t['avg_macs'] / 1e9:.1f} | "
                     f"{t['images_per_s'] / base_ips:.2f}x |")
    lines += [
        "",
        f"The dynamic engine ran the operating point's thresholds ({thr_txt}); it computes each step only for "
        f"the images still running, so its speed-up over running all steps is {r['speedup_vs_all_steps']:.2f}x. "
        "GMAC/s is the work done per second: where it differs between engines, the speed-up is not only "
        "the MACs saved (small patches and large images use the hardware differently).",
        "",
    ]
    lines += _training_section(r.get("training"), out_dir)
    lines += [
        "## Does looking matter?",
        "",
        f"{r['random_policy']['test_samples']} test images run through all {T} steps, the focus patches where "
        "the learned policy puts them against uniformly random locations (the same model, so the glance is the "
        "same):",
        "",
        "| step | MACs so far (M) | learned policy | random locations | policy gain |",
        "|---|---:|---:|---:|---:|",
    ]
    cum = 0.0
    for k, (m, a, ra) in enumerate(zip(g["step_macs"], learned, rnd), start=1):
        cum += m
        lines.append(f"| {k}{' (glance)' if k == 1 else ''} | {cum / 1e6:.2f} | {pct(a)} | {pct(ra)} | "
                     + ("" if k == 1 else f"{100 * (a - ra):+.1f} points") + " |")
    lines.append("")
    if hit is not None:
        lines += [
            "The first focus patch (step 2) holds at least "
            f"{100 * hit['min_fraction_of_object']:.0f} % of the box of the object the image is about (the digit) "
            f"for {pct(hit['policy'])} of the test images with the learned policy, {pct(hit['random'])} with "
            "random locations.",
            "",
        ]
    if r["samples"]:
        looked = sum(s["exit_step"] > 1 for s in r["samples"])
        lines += [
            "## What the model looked at",
            "",
            f"`gfnet predict` on {len(r['samples'])} test images at budget {op['budget']}: "
            f"{len(r['samples']) - looked} that exit at the glance and {looked} that needed to look (the first of "
            "each exit step in the test split). Each picture shows the image with the focus boxes in order, then the "
            "glance and every patch taken before exiting.",
            "",
            "| image | label | prediction | confidence | exit step | picture |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for s in r["samples"]:
            lines.append(f"| `{Path(s['image']).name}` | {s['label']} | {s['prediction']} | {s['confidence']:.3f} | "
                         f"{s['exit_step']}/{T} | ![]({_rel(s['picture'], out_dir)}) |")
        lines.append("")
    if targets:
        commands = claims.reproduce(r)
    else:  # the run folder holds its config (config.yaml): no flag needs repeating
        commands = [f"gfnet train --out {r['run']} --resume",
                    f"gfnet train --baseline --out {r['run']} --resume",
                    f"gfnet eval {r['run']} --baseline {r['baseline_checkpoint']}"]
    lines += ["## Reproduce", "", "```", *commands, f"gfnet report {r['run']}", "```", ""]
    return "\n".join(lines)
