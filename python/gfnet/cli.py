"""The ``gfnet`` command line: ``gfnet train | eval | predict | flops``.

Each subcommand is a function registered in ``COMMANDS`` with the arguments it adds to its
own subparser, so new subcommands plug in without touching the others.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .errors import GFNetError

# name -> (add_arguments(parser), run(args) -> exit code, help)
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {}


def command(name: str, help: str):
    def deco(fn):
        COMMANDS[name] = (fn.add_arguments, fn, help)
        return fn

    return deco


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments shared by every subcommand that builds a config."""
    p.add_argument("--preset", default=None,
                   help="named preset (see --list-presets); default: digits, or the YAML's 'preset'")
    p.add_argument("--config", metavar="YAML", default=None, help="YAML file of config overrides")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                   help="override a config field, e.g. --set model.patch_size=128 (repeatable)")
    p.add_argument("--data", metavar="PATH", default=None, help="data folder (data.root)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (run.device)")
    p.add_argument("--pretrained", action="store_true",
                   help="initialise backbones from torchvision's pretrained weights (may download)")
    p.add_argument("--init-from", metavar="CKPT", default=None,
                   help="start both encoders from a static baseline's weights (model.init_from)")
    p.add_argument("--seed", type=int, default=None, help="random seed (run.seed)")
    p.add_argument("--list-presets", action="store_true", help="list the presets and exit")


def config_from_args(args: argparse.Namespace, extra: dict | None = None):
    from .config import build_config, load_yaml, parse_overrides

    preset = args.preset
    if preset is None and not (args.config and "preset" in load_yaml(args.config)):
        preset = "digits"
    overrides = parse_overrides(args.overrides)
    for key, val in (("data.root", args.data), ("run.device", args.device), ("run.seed", args.seed),
                     ("model.init_from", args.init_from)):
        if val is not None:
            overrides[key] = val
    if args.pretrained:
        overrides["model.pretrained"] = True
    overrides.update(extra or {})
    return build_config(preset, args.config, overrides)


def _run_shortcuts(args: argparse.Namespace) -> dict:
    """Config overrides of the --epochs and --no-progress shortcuts (train, demo)."""
    extra: dict = {}
    if args.epochs is not None:
        extra.update({f"optim.epochs_stage{k}": args.epochs for k in (1, 2, 3)})
    if args.no_progress:
        extra["run.progress"] = False
    return extra


def _list_presets() -> int:
    from .config import get_preset, list_presets

    for name in list_presets():
        m = get_preset(name).model
        print(f"{name:28s} backbone={m.backbone} P={m.patch_size} T={m.max_steps} "
              f"image={m.image_size} classifier={m.classifier}")
    return 0


# ---------------------------------------------------------------------- train
def _train_args(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--stage", default="all", choices=["1", "2", "3", "all"],
                   help="which stage to run; 2 and 3 read the previous stage's checkpoint")
    p.add_argument("--out", metavar="DIR", default=None, help="output folder (checkpoints, metrics)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out where it stopped (skips finished stages)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of every stage (shortcut)")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size (optim.batch_size)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--baseline", action="store_true",
                   help="train the static baseline instead: the same backbone on the full-resolution "
                        "image, trained as long as GFNet's encoders (stage-1 + stage-3 epochs) with their "
                        "recipe; writes OUT/baseline.pt (resumable)")


def _train(args: argparse.Namespace) -> int:
    if args.list_presets:
        return _list_presets()
    extra = _run_shortcuts(args)
    if args.batch_size is not None:
        extra["optim.batch_size"] = args.batch_size
    cfg = config_from_args(args, extra)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    if not args.out:
        raise GFNetError("--out DIR is required (where checkpoints and metrics go)")
    if args.baseline:
        from .train.baseline import train_baseline

        ck = train_baseline(cfg, args.out, resume=args.resume)
        print(f"static baseline ({cfg.model.backbone}, {cfg.model.image_size} px): test accuracy "
              f"{ck['test_accuracy']:.4f}, {ck['macs'] / 1e6:.2f} M MACs per image")
        return 0
    stages = [1, 2, 3] if args.stage == "all" else [int(args.stage)]
    from .train import train

    results = train(cfg, args.out, stages, resume=args.resume)
    last = results.get(f"stage{stages[-1]}")
    if last:
        print(f"test accuracy per step (policy): {' '.join(f'{a:.4f}' for a in last['policy'])}")
        print(f"test accuracy per step (random): {' '.join(f'{a:.4f}' for a in last['random'])}")
    return 0


_train.add_arguments = _train_args  # type: ignore[attr-defined]
command("train", "train GFNet: the three stages, or one of them")(_train)


# ---------------------------------------------------------------------- shared (eval, predict)
def _device(spec: str | None):
    from .train.distributed import _pick_device

    return _pick_device(spec or "auto", 0)


def _threads(cfg) -> None:
    if cfg.run.threads > 0:
        import torch

        torch.set_num_threads(cfg.run.threads)


def _parse_budgets(text: str) -> list[int] | None:
    """"all" -> None (every budget); "1,5,10-12" -> [1, 5, 10, 11, 12] (checked 1 .. 39)."""
    from .budget import budget_q

    if text.strip().lower() == "all":
        return None
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                vals = list(range(int(a), int(b) + 1))
            else:
                vals = [int(part)]
        except ValueError:
            raise GFNetError(f"--budgets: {part!r} is not a budget number or range (e.g. 1,5,10-12)") from None
        for v in vals:
            budget_q(v)  # BudgetError: out of range
        out.extend(vals)
    if not out:
        raise GFNetError("--budgets is empty")
    return sorted(set(out))


# ---------------------------------------------------------------------- eval
def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint file or training output folder")
    p.add_argument("--out", metavar="DIR", default=None, help="output folder (default: CKPT's folder / eval)")
    p.add_argument("--data", metavar="PATH", default=None, help="data folder (data.root), if moved")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    p.add_argument("--budgets", default="all", help="budgets to evaluate: all (1..39) or e.g. 1,5,10-12")
    p.add_argument("--target-macs", type=float, action="append", default=[], metavar="M",
                   help="also evaluate thresholds for this average MACs per image, in millions (repeatable)")
    p.add_argument("--recalibrate", action="store_true",
                   help="recompute the thresholds on the validation split even if the checkpoint has them")
    p.add_argument("--no-store", action="store_true", help="do not write the thresholds into the checkpoint")
    p.add_argument("--simulate", action="store_true",
                   help="simulate exits from all-step logits (the official way) instead of the dynamic engine")
    p.add_argument("--batch-size", type=int, default=None, help="evaluation batch size")
    p.add_argument("--max-batches", type=int, default=0, help="evaluate at most this many batches per split")
    p.add_argument("--baseline", metavar="CKPT", default=None,
                   help="a static baseline checkpoint (gfnet train --baseline): its point on the plot")
    p.add_argument("--baseline-acc", type=float, default=None,
                   help="accuracy of a static baseline (the backbone on the full image), plotted at its MACs")


def _loader(ds, bs: int):
    from torch.utils.data import DataLoader

    return DataLoader(ds, batch_size=bs, shuffle=False, num_workers=0)


def _eval(args: argparse.Namespace) -> int:
    import csv
    import json
    from pathlib import Path

    from .budget import (
        NUM_BUDGETS,
        calibrate,
        evaluate_dynamic,
        evaluate_simulated,
        store_calibration,
        stored_calibration,
        thresholds_for_macs,
    )
    from .data import build_datasets
    from .flops import count_step_flops, format_table
    from .inference import (
        collect_anytime,
        load_checkpoint_model,
        per_step_accuracy,
        resolve_checkpoint,
    )

    budgets = _parse_budgets(args.budgets)
    if args.baseline is not None:
        from .train.baseline import load_baseline_checkpoint

        bck = load_baseline_checkpoint(args.baseline)
        args.baseline_acc = float(bck["test_accuracy"])
        baseline_macs = float(bck["macs"])
    else:
        baseline_macs = None
    ck_path = resolve_checkpoint(args.checkpoint)
    device = _device(args.device)
    overrides = {"data.root": args.data} if args.data else None
    model, cfg, ck = load_checkpoint_model(ck_path, device, overrides)
    _threads(cfg)
    sf = count_step_flops(model)
    step_macs = [float(m) for m in sf.macs]
    for t in args.target_macs:
        if not (step_macs[0] <= t * 1e6 <= sum(step_macs)):
            raise GFNetError(f"--target-macs {t:g} M is out of range: between the glance alone "
                             f"({step_macs[0] / 1e6:.3f} M) and all steps ({sum(step_macs) / 1e6:.3f} M)")
    ds = build_datasets(cfg, ("val", "test"))
    bs = args.batch_size or cfg.run.eval_batch_size or cfg.optim.batch_size
    out = Path(args.out) if args.out else ck_path.parent / "eval"
    out.mkdir(parents=True, exist_ok=True)

    cal = None if args.recalibrate else stored_calibration(ck)
    if cal is not None and ([round(m) for m in cal.step_macs] != [round(m) for m in step_macs]
                            or any(b not in {p.budget for p in cal.points} for b in budgets or range(1, NUM_BUDGETS + 1))):
        cal = None  # stale (another model's costs) or incomplete: calibrate again
    val_logits = None
    if cal is None:
        val_logits, _ = collect_anytime(model, _loader(ds["val"], bs), device=device, max_batches=args.max_batches)
        cal = calibrate(val_logits, step_macs)  # all 39 budgets: cheap once the logits are there
        if not args.no_store:
            store_calibration(ck_path, cal)
        print(f"calibrated {len(cal.points)} budgets on {cal.samples} validation images"
              + ("" if args.no_store else f" (stored in {ck_path})"))
    else:
        print(f"using the thresholds stored in {ck_path} ({len(cal.points)} budgets, {cal.samples} "
              f"{cal.split} images)")
    points = [p for p in cal.points if budgets is None or p.budget in budgets]
    if args.target_macs:
        if val_logits is None:
            val_logits, _ = collect_anytime(model, _loader(ds["val"], bs), device=device,
                                            max_batches=args.max_batches)
        points += [thresholds_for_macs(val_logits, step_macs, t * 1e6) for t in args.target_macs]

    test_loader = _loader(ds["test"], bs)
    test_logits, labels = collect_anytime(model, test_loader, device=device, max_batches=args.max_batches)
    step_acc = per_step_accuracy(test_logits, labels)
    if args.simulate:
        results = evaluate_simulated(test_logits, labels, cal, points)
    else:
        results = evaluate_dynamic(model, test_loader, cal, points, device=device, max_batches=args.max_batches)

    rows = [r.to_row() for r in results]
    baseline = None
    if args.baseline_acc is not None:
        baseline = (baseline_macs if baseline_macs is not None else float(sf.static_macs), args.baseline_acc)
    summary = {
        "checkpoint": str(ck_path), "preset": cfg.preset, "engine": "simulated" if args.simulate else "dynamic",
        "test_samples": int(labels.numel()), "step_macs": step_macs, "step_flops": [2 * m for m in step_macs],
        "static_macs": sf.static_macs, "anytime_accuracy": step_acc, "calibration_split": cal.split,
        "baseline_accuracy": args.baseline_acc, "baseline_macs": baseline[0] if baseline else None,
        "budgets": rows,
    }
    (out / "eval.json").write_text(json.dumps(summary, indent=2))
    T = len(step_macs)
    with open(out / "eval.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["budget", "q", "accuracy", "avg_macs", "avg_flops"]
                   + [f"thr{k}" for k in range(1, T)] + [f"exit{k}" for k in range(1, T + 1)])
        for r in rows:
            w.writerow([r["budget"] if r["budget"] is not None else "", f"{r['q']:.6g}", f"{r['accuracy']:.6f}",
                        f"{r['avg_macs']:.1f}", f"{r['avg_flops']:.1f}"]
                       + ["" if t is None else f"{t:.6f}" for t in r["thresholds"]] + r["exit_counts"])
    from .viz import plot_accuracy_vs_flops

    plot_accuracy_vs_flops(out / "eval.png", [r["avg_macs"] for r in rows], [r["accuracy"] for r in rows],
                           step_macs_cum=sf.cumulative_macs, step_acc=step_acc, baseline=baseline,
                           title=f"GFNet {cfg.preset}: accuracy vs average MACs")
    print(format_table(sf, f"per-step cost ({cfg.preset})"))
    print("anytime accuracy per step: " + " ".join(f"{a:.4f}" for a in step_acc))
    print(f"{'budget':>6} {'q':>6} {'acc':>7} {'avg MACs (M)':>13} {'avg FLOPs (M)':>14}  exits per step")
    for r in rows:
        b = "macs" if r["budget"] is None else str(r["budget"])
        print(f"{b:>6} {r['q']:>6.3g} {r['accuracy']:>7.4f} {r['avg_macs'] / 1e6:>13.3f} "
              f"{r['avg_flops'] / 1e6:>14.3f}  {r['exit_counts']}")
    print(f"wrote {out / 'eval.json'}, {out / 'eval.csv'}, {out / 'eval.png'}")
    return 0


_eval.add_arguments = _eval_args  # type: ignore[attr-defined]
command("eval", "budgeted evaluation: thresholds per budget, accuracy vs average FLOPs")(_eval)


# ---------------------------------------------------------------------- predict
def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint file or training output folder")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files (any format PIL reads)")
    p.add_argument("--budget", type=int, default=None,
                   help="use the stored thresholds of this budget (1..39; default 20 if calibrated, "
                        "else every image runs all steps)")
    p.add_argument("--thresholds", default=None, metavar="T1,T2,...",
                   help="explicit confidence thresholds of steps 1..T-1")
    p.add_argument("--out", metavar="DIR", default=None, help="where the pictures go (default: ./predict)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")


def _predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from .budget import budget_q, stored_calibration
    from .data import read_image
    from .inference import load_checkpoint_model, resolve_checkpoint

    if args.budget is not None:
        budget_q(args.budget)
    ck_path = resolve_checkpoint(args.checkpoint)
    device = _device(args.device)
    model, cfg, ck = load_checkpoint_model(ck_path, device)
    _threads(cfg)
    m = cfg.model
    images = torch.stack([read_image(p, m.in_channels, m.image_size) for p in args.images])
    T = m.max_steps
    if args.thresholds is not None:
        try:
            thr = [float(x) for x in args.thresholds.split(",")]
        except ValueError:
            raise GFNetError(f"--thresholds {args.thresholds!r} is not a comma-separated list of numbers") from None
        if len(thr) != T - 1:
            raise GFNetError(f"--thresholds needs {T - 1} values (steps 1..{T - 1}), got {len(thr)}")
        source = "given"
    else:
        cal = stored_calibration(ck)
        if cal is None:
            if args.budget is not None:
                raise GFNetError(f"checkpoint {str(ck_path)!r} has no thresholds: run `gfnet eval` first")
            thr, source = None, "none (all steps)"
        else:
            b = args.budget if args.budget is not None else 20
            thr, source = cal.point(b).thresholds, f"budget {b}"
    out = Path(args.out) if args.out else Path("predict")
    print(f"thresholds: {source}")
    from .viz import predict_pictures

    for row in predict_pictures(model, images.to(device), args.images, thr, out):
        print(f"{row['image']}: class {row['prediction']} confidence {row['confidence']:.4f} "
              f"exit step {row['exit_step']}/{T} -> {row['picture']}")
    return 0


_predict.add_arguments = _predict_args  # type: ignore[attr-defined]
command("predict", "classify images with early exit; pictures of the glance and focus patches")(_predict)


# ---------------------------------------------------------------------- flops
def _flops_args(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--json", action="store_true", help="print the counts as JSON")


def _flops(args: argparse.Namespace) -> int:
    if args.list_presets:
        return _list_presets()
    import json

    import torch

    from .flops import count_step_flops, format_table
    from .models import build_model

    cfg = config_from_args(args)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    sf = count_step_flops(model)
    if args.json:
        print(json.dumps(sf.to_dict(), indent=2))
    else:
        m = cfg.model
        print(format_table(sf, f"{cfg.preset}: backbone {m.backbone}, image {m.image_size}, "
                               f"patch {m.patch_size}, T={m.max_steps} (per image)"))
    return 0


_flops.add_arguments = _flops_args  # type: ignore[attr-defined]
command("flops", "per-step MACs/FLOPs of a preset (glance, focus steps, static baseline)")(_flops)


# ---------------------------------------------------------------------- report
def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="training output folder (after gfnet eval RUN --baseline ...)")
    p.add_argument("--baseline", metavar="CKPT", default=None, help="static baseline checkpoint (default RUN/baseline.pt)")
    p.add_argument("--eval", metavar="JSON", default=None, dest="eval_json",
                   help="gfnet eval's summary (default RUN/eval/eval.json)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="where report.md and report.json go, pictures under DIR/report/ (default RUN)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    p.add_argument("--images", type=int, default=8, help="test images to draw the glance and patches of")
    p.add_argument("--passes", type=int, default=3, help="timed passes over the test images per engine")
    p.add_argument("--batch-sizes", default="8,16,64,128",
                   help="batch sizes of the throughput runs (comma-separated); each engine is judged at its best")
    p.add_argument("--max-images", type=int, default=2000,
                   help="test images in the throughput runs and the learned-vs-random comparison")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the run's run.threads)")


def _report(args: argparse.Namespace) -> int:
    from .report import build_report

    for name in ("images", "passes", "max_images"):
        if getattr(args, name) < (0 if name == "images" else 1):
            raise GFNetError(f"--{name.replace('_', '-')} must be {'>= 0' if name == 'images' else '>= 1'}")
    try:
        batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    except ValueError:
        raise GFNetError(f"--batch-sizes {args.batch_sizes!r} is not a comma-separated list of integers") from None
    if not batch_sizes or min(batch_sizes) < 1:
        raise GFNetError("--batch-sizes must be positive integers")
    r = build_report(args.run, baseline=args.baseline, eval_json=args.eval_json, out=args.out,
                     device=_device(args.device), num_images=args.images, passes=args.passes,
                     batch_sizes=batch_sizes, max_images=args.max_images, threads=args.threads)
    op, b = r["operating_point"], r["baseline"]
    print(f"static baseline: {b['test_accuracy']:.4f} at {b['macs'] / 1e6:.2f} M MACs")
    print(f"operating point: budget {op['budget']}, {op['accuracy']:.4f} at {op['avg_macs'] / 1e6:.2f} M MACs "
          f"({100 * op['macs_fraction']:.1f} % of the baseline's); dynamic throughput "
          f"{r['speedup_vs_baseline']:.2f}x the baseline's")
    for claim, ok in r["claims"].items():
        print(f"{claim}: {'met' if ok else 'NOT met'}")
    print(f"wrote {r['files']['report']}")
    return 0


_report.add_arguments = _report_args  # type: ignore[attr-defined]
command("report", "report.md of a run: accuracy vs MACs against the static baseline, throughput, pictures")(_report)


# ---------------------------------------------------------------------- demo
def _demo_args(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--out", metavar="DIR", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of every GFNet stage (the baseline trains stage-1 + stage-3 epochs)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    p.add_argument("--images", type=int, default=8, help="test images to draw (report)")
    p.add_argument("--passes", type=int, default=3, help="timed passes per engine (report)")


def _demo(args: argparse.Namespace) -> int:
    """Everything `make demo` does, resumable: each step reuses what a previous run finished."""
    from pathlib import Path

    from .train import train
    from .train.baseline import train_baseline

    if args.list_presets:
        return _list_presets()
    cfg = config_from_args(args, _run_shortcuts(args))
    out = Path(args.out)

    def step(k: int, what: str) -> None:
        print(f"\n== gfnet demo {k}/4: {what} ==", flush=True)

    # The paper starts both encoders from the ImageNet-trained backbone, the network a user
    # already has; here that network is the static baseline, trained first on the same data.
    step(1, f"train the static baseline ({cfg.model.backbone} on the full image) -> {out / 'baseline.pt'}")
    ck = train_baseline(cfg.copy(), out, resume=True)  # resume: a finished baseline is reused
    print(f"static baseline: test accuracy {ck['test_accuracy']:.4f}, {ck['macs'] / 1e6:.2f} M MACs per image")
    gf_cfg = cfg.copy()
    if not (gf_cfg.model.init_from or gf_cfg.model.pretrained):
        gf_cfg.model.init_from = str(out / "baseline.pt")
    step(2, f"train GFNet ({cfg.preset}), encoders from {gf_cfg.model.init_from or 'pretrained weights'}: "
            f"warm-up, policy (PPO), fine-tune -> {out}")
    train(gf_cfg, out, [1, 2, 3], resume=True)  # finished stages are skipped
    # --simulate: every budget's exits from one all-step pass (the same numbers as the dynamic
    # engine, which the tests check); the report runs the dynamic engine itself for throughput.
    step(3, "calibrate thresholds on the validation split, evaluate every budget on the test split")
    rc = main(["eval", str(out), "--baseline", str(out / "baseline.pt"), "--simulate"])
    if rc:
        return rc
    step(4, "report: throughput of the dynamic engine vs all steps vs the baseline, pictures")
    return main(["report", str(out), "--images", str(args.images), "--passes", str(args.passes)]
                + (["--device", args.device] if args.device else []))


_demo.add_arguments = _demo_args  # type: ignore[attr-defined]
command("demo", "the main job end to end: baseline, GFNet on it, every budget, RUN/report.md")(_demo)


# ---------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gfnet", description="GFNet: glance and focus networks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (add_args, _run, help_) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_, description=help_))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _add, run, _help = COMMANDS[args.command]
    try:
        return run(args)
    except GFNetError as e:
        print(f"gfnet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gfnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # python -m gfnet.cli
    sys.exit(main())
