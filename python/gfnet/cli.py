"""The ``gfnet`` command line: ``gfnet train | eval | predict | flops | report |
import-official | demo``.

Each subcommand is a function registered in ``COMMANDS`` by ``@command(name, help,
arguments)``, ``arguments`` adding its options to its own subparser, so new subcommands plug in
without touching the others. A command only parses its arguments, calls the library function
that does the work (``gfnet.train.train``, ``gfnet.evaluate.evaluate_run``,
``gfnet.bulk_predict.predict_folder``, ``gfnet.flops.flops_summary``, ``gfnet.report.build_report``,
``gfnet.official.import_official``, ``gfnet.demo.run_demo``) and prints what it returns; errors
are ``GFNetError``s, printed as one line by ``main``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .config.schema import LAYOUTS, PRECISIONS
from .errors import GFNetError

if TYPE_CHECKING:
    from .train.callbacks import TrainerCallback

# name -> (add_arguments(parser), run(args) -> exit code, help)
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {}


def command(name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None]):
    """Registers the decorated ``run(args) -> exit code`` as subcommand ``name``; ``arguments``
    adds its options to its subparser."""
    def deco(fn):
        COMMANDS[name] = (arguments, fn, help)
        return fn

    return deco


DEFAULT_PRESET = "digits"  # the built-in data set, when no --data is given
DATA_PRESET = "small"  # a user's own images (--data DIR) without a --preset: a first run on a CPU


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments shared by every subcommand that builds a config."""
    p.add_argument("--preset", default=None,
                   help=f"named preset (see --list-presets); default: {DEFAULT_PRESET}, or "
                        f"{DATA_PRESET} with --data, or the YAML's 'preset'")
    p.add_argument("--config", metavar="YAML", default=None, help="YAML file of config overrides")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                   help="override a config field, e.g. --set model.patch_size=128 (repeatable)")
    p.add_argument("--data", metavar="DIR", default=None,
                   help="a folder of images: DIR/train/<class>/* with DIR/val/ and/or "
                        "DIR/test/, or DIR/<class>/* (20 %% held out); the classes, channels and "
                        "normalisation are read from it unless set (another data set's folder "
                        "with --set data.dataset=NAME)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (run.device)")
    p.add_argument("--pretrained", action="store_true",
                   help="initialise backbones from torchvision's pretrained weights (may download)")
    p.add_argument("--init-from", metavar="CKPT", default=None,
                   help="where the weights start (model.init_from): a static baseline's backbone for both "
                        "encoders (stage 1), or any gfnet checkpoint, e.g. an imported official one")
    p.add_argument("--seed", type=int, default=None, help="random seed (run.seed)")
    p.add_argument("--list-presets", action="store_true", help="list the presets and exit")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _user_settings(args: argparse.Namespace) -> tuple[dict, dict]:
    """(the --config YAML's mapping, the --set overrides): what the user set key by key."""
    from .config import load_yaml, parse_overrides

    return (load_yaml(args.config) if args.config else {}), parse_overrides(args.overrides)


def _flag_overrides(args: argparse.Namespace, sets: dict, extra: dict | None) -> dict:
    """--set, then the flags that stand for config keys, then ``extra`` (the shortcuts)."""
    overrides = dict(sets)
    for key, val in (("run.device", args.device), ("run.seed", args.seed),
                     ("model.init_from", args.init_from)):
        if val is not None:
            overrides[key] = val
    if args.pretrained:
        overrides["model.pretrained"] = True
    overrides.update(extra or {})
    return overrides


def _fit_to_data(cfg, args: argparse.Namespace, yaml_settings: dict, sets: dict):
    """With --data DIR: the classes, channels and normalisation read from the folder, except
    where the YAML or --set chose them (data/folder_facts.py)."""
    if args.data is None:
        return cfg
    from .data.folder_facts import explicit_keys, fit_config_to_folder

    facts = fit_config_to_folder(cfg, args.data, explicit_keys(cfg, yaml_settings, sets))
    if facts is not None:
        _say(f"data: {facts.summary()}")
        if list(cfg.model.mean) != list(facts.mean):
            _say(f"normalisation: mean {list(cfg.model.mean)}, std {list(cfg.model.std)}, "
                 "those of the weights the model starts from (or as set), not the folder's")
    return cfg


def config_from_args(args: argparse.Namespace, extra: dict | None = None):
    """The config of a command line: preset -> --config YAML -> --set and the flags (``extra``:
    the shortcuts), then what --data DIR says (classes, channels, normalisation)."""
    from .config import build_config

    yaml_settings, sets = _user_settings(args)
    preset = args.preset
    if preset is None and "preset" not in yaml_settings:
        preset = DATA_PRESET if args.data else DEFAULT_PRESET
    overrides = _flag_overrides(args, sets, extra)
    if args.data is not None:
        overrides["data.root"] = args.data
    # with --data the folder's facts complete the config before it is validated (a set channel
    # count needs the normalisation measured for it)
    cfg = build_config(preset, args.config, overrides, validate=args.data is None)
    return _fit_to_data(cfg, args, yaml_settings, sets)


def config_over_run(args: argparse.Namespace, stored, extra: dict | None = None):
    """The config of a command line continuing a run: the run's own config (RUN/config.yaml)
    with what the command line sets laid over it. Another preset starts from that preset
    instead (the run then refuses every change it makes, unless --force)."""
    from .config import apply_dict

    yaml_settings, sets = _user_settings(args)
    preset = args.preset or yaml_settings.get("preset")
    if preset is not None and preset != stored.preset:
        return config_from_args(args, extra)
    cfg = stored.copy()
    apply_dict(cfg, {k: v for k, v in yaml_settings.items() if k != "preset"})
    apply_dict(cfg, _flag_overrides(args, sets, extra))
    if args.data is None:
        return cfg.validate()
    cfg.data.root = args.data
    return _fit_to_data(cfg, args, yaml_settings, sets)


def _run_shortcuts(args: argparse.Namespace) -> dict:
    """Config overrides of the --epochs and --no-progress shortcuts (train, demo)."""
    extra: dict = {}
    if args.epochs is not None:
        extra.update({f"optim.epochs_stage{k}": args.epochs for k in (1, 2, 3)})
        extra["optim.epochs_baseline"] = 0  # the baseline follows: stage-1 + stage-3 epochs
    if args.no_progress:
        extra["run.progress"] = False
    return extra


def _list_presets() -> int:
    from .config import get_preset, list_presets, size_text

    for name in list_presets():
        m = get_preset(name).model
        print(f"{name:28s} backbone={m.backbone} P={m.patch_size} T={m.max_steps} "
              f"image={size_text(m.image_size)} classifier={m.classifier}")
    return 0


# ---------------------------------------------------------------------- train
def _train_args(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--stage", default="all", choices=["1", "2", "3", "all"],
                   help="which stage to run; a later stage reads the previous stage's checkpoint "
                        "(optim.policy_training=differentiable has no stage 2)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="the run folder: checkpoints, metrics, and config.yaml, the run's "
                        "config, which --resume, --baseline and later stages start from")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out where it stopped (skips finished stages), "
                        "with its own config (OUT/config.yaml): no other flag is needed")
    p.add_argument("--force", action="store_true",
                   help="go on although this command's config differs from the run's "
                        "config.yaml in the model, data or schedule (refused otherwise, naming "
                        "the changes)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of every stage (shortcut)")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size (optim.batch_size)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--list-backbones", action="store_true",
                   help="list the backbones (model.backbone) and exit")
    p.add_argument("--baseline", action="store_true",
                   help="train the static baseline instead, on the run's own data and model "
                        "(OUT/config.yaml when there is one): the same backbone on the "
                        "full-resolution image, trained as long as GFNet's encoders (stage-1 + "
                        "stage-3 epochs) with their recipe; writes OUT/baseline.pt (resumable)")


def train_config(args: argparse.Namespace):
    """The config of a ``gfnet train`` command line (the shortcuts included): over the run's
    own config when --out holds one (RUN/config.yaml), else built from the flags."""
    from .run_config import load_run_config, run_config_path

    extra = _run_shortcuts(args)
    if args.batch_size is not None:
        extra["optim.batch_size"] = args.batch_size
    stored = load_run_config(args.out) if args.out else None
    if stored is None:
        return config_from_args(args, extra)
    _say(f"config: {run_config_path(args.out)} (the run's own), with this command's settings "
         "over it")
    return config_over_run(args, stored, extra)


def _list_backbones() -> int:
    from .models.backbones import describe_backbones

    print(describe_backbones())
    return 0


@command("train", "train GFNet: the three stages, or one of them",
         _train_args)
def _train(args: argparse.Namespace, callbacks: Sequence[TrainerCallback] = ()) -> int:
    """``gfnet train``; ``callbacks`` go to the Trainer (tests/gfnet/train_with_callbacks.py)."""
    if args.list_presets:
        return _list_presets()
    if args.list_backbones:
        return _list_backbones()
    cfg = train_config(args)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    if not args.out:
        raise GFNetError("--out DIR is required (where checkpoints and metrics go)")
    if args.baseline:
        from .config import size_text
        from .train.baseline import train_baseline

        ck = train_baseline(cfg, args.out, resume=args.resume, callbacks=callbacks,
                            force=args.force)
        print(f"static baseline ({cfg.model.backbone}, {size_text(cfg.model.image_size)} px): test accuracy "
              f"{ck['test_accuracy']:.4f}, {ck['macs'] / 1e6:.2f} M MACs per image")
        return 0
    from .train import gfnet_stages, train

    recipe = gfnet_stages(cfg)
    stages = recipe if args.stage == "all" else [int(args.stage)]
    if not set(stages) <= set(recipe):
        raise GFNetError(f"--stage {args.stage}: with optim.policy_training={cfg.optim.policy_training} GFNet "
                         f"trains stages {', '.join(map(str, recipe))} (stage 3 learns the policy "
                         "by gradient; there is no PPO stage 2)")

    results = train(cfg, args.out, stages, resume=args.resume, callbacks=callbacks,
                    force=args.force)
    last = results.get(f"stage{stages[-1]}")
    if last:
        print(f"test accuracy per step (policy): {' '.join(f'{a:.4f}' for a in last['policy'])}")
        print(f"test accuracy per step (random): {' '.join(f'{a:.4f}' for a in last['random'])}")
    return 0


# ---------------------------------------------------------------------- shared (eval, predict)
def _parse_budgets(text: str) -> list[int] | None:
    """"all" -> None (every budget); "1,5,10-12" -> [1, 5, 10, 11, 12] (checked by evaluate_run)."""
    if text.strip().lower() == "all":
        return None
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                out.extend(range(int(a), int(b) + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise GFNetError(f"--budgets: {part!r} is not a budget number or range (e.g. 1,5,10-12)") from None
    if not out:
        raise GFNetError("--budgets is empty")
    return sorted(set(out))


# ---------------------------------------------------------------------- eval
def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint file or training output folder")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="output folder (default: CKPT's folder / eval). The thresholds are stored in the "
                        "checkpoint only when DIR is inside its folder: nothing outside DIR is written")
    p.add_argument("--force", action="store_true",
                   help="replace files (or links) in DIR that an evaluation did not write")
    p.add_argument("--data", metavar="PATH", default=None, help="data folder (data.root), if moved")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    p.add_argument("--budgets", default="all", help="budgets to evaluate: all (1..39) or e.g. 1,5,10-12")
    p.add_argument("--target-macs", type=float, action="append", default=[], metavar="M",
                   help="also evaluate thresholds for this average MACs per image, in millions (repeatable)")
    p.add_argument("--recalibrate", action="store_true",
                   help="recompute the thresholds even if the checkpoint has them, on the calibration split "
                        "(data.calibration: never the test images)")
    p.add_argument("--no-store", action="store_true", help="do not write the thresholds into the checkpoint")
    p.add_argument("--simulate", action="store_true",
                   help="simulate exits from all-step logits (the official way) instead of the dynamic engine")
    p.add_argument("--batch-size", type=int, default=None, help="evaluation batch size")
    p.add_argument("--max-batches", type=int, default=0, help="evaluate at most this many batches per split")
    p.add_argument("--baseline", metavar="CKPT", default=None,
                   help="a static baseline checkpoint (gfnet train --baseline): its point on the plot")
    p.add_argument("--baseline-acc", type=float, default=None,
                   help="accuracy of a static baseline (the backbone on the full image), plotted at its MACs")
    _format_args(p, "the run's run.precision, fp32 unless set; thresholds are calibrated and stored per "
                    "precision")


def _format_args(p: argparse.ArgumentParser, default: str = "fp32") -> None:
    """--precision and --layout: the networks' inference format (gfnet.precision)."""
    p.add_argument("--precision", choices=list(PRECISIONS), default=None,
                   help=f"arithmetic of the networks: fp32, bf16 (a CPU with native bf16, or a GPU) or fp16 "
                        f"(a GPU); exits are decided in fp32 either way (default: {default})")
    p.add_argument("--layout", choices=list(LAYOUTS), default=None,
                   help="memory layout of the networks' activations (default auto: channels_last)")


@command("eval", "budgeted evaluation: thresholds per budget, accuracy vs average FLOPs",
         _eval_args)
def _eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_run

    evaluate_run(args.checkpoint, out=args.out, data_root=args.data, device=args.device,
                 budgets=_parse_budgets(args.budgets), target_macs=[t * 1e6 for t in args.target_macs],
                 recalibrate=args.recalibrate, store=not args.no_store, simulate=args.simulate,
                 batch_size=args.batch_size, max_batches=args.max_batches, baseline=args.baseline,
                 baseline_acc=args.baseline_acc, force=args.force, log=print, precision=args.precision,
                 layout=args.layout)
    return 0


# ---------------------------------------------------------------------- predict
def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint file or training output folder")
    p.add_argument("images", metavar="INPUT", nargs="*",
                   help="image files (any format PIL reads) and folders (searched recursively for images)")
    p.add_argument("--files-from", metavar="LIST", default=None,
                   help="a text file of image paths, one per line (added to the INPUTs)")
    p.add_argument("--budget", type=int, default=None,
                   help="use the stored thresholds of this budget (1..39; default 20 if calibrated, "
                        "else every image runs all steps)")
    p.add_argument("--thresholds", default=None, metavar="T1,T2,...",
                   help="explicit confidence thresholds: one for every step, or those of steps 1..T-1")
    p.add_argument("--target-macs", type=float, default=None, metavar="M",
                   help="the calibrated budget spending the most average MACs per image not above M "
                        "millions")
    p.add_argument("--class-names", metavar="FILE", default=None,
                   help="names of the classes, one per line (or a JSON list), for a checkpoint without them")
    # default: predictor.DEFAULT_BATCH_SIZE, read when the command runs (the predictor imports torch)
    p.add_argument("--batch-size", type=int, default=None,
                   help="rows in flight in the streaming engine, and images per decoding batch (default 64)")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader processes decoding and resizing the images (default: the cores but one, "
                        "at most 8; 0: in the main process)")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl", dest="fmt",
                   help="DIR/predictions.jsonl (default) or DIR/predictions.csv")
    p.add_argument("--pictures", type=int, default=None, metavar="N",
                   help="draw the glance and patches of the first N images (default: every image of a run of "
                        "at most 16, else none)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over: drop the predictions already in DIR (default: resume, skipping them)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-resize", action="store_true",
                   help="run each image at its own size instead of the model's evaluation resize and crop "
                        "(the per-batch engine: images of many sizes cannot share a pool)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="where predictions.jsonl and the pictures go (default: ./predict); a rerun resumes")
    p.add_argument("--force", action="store_true",
                   help="replace files (or links) in DIR that a prediction did not write")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (under torchrun: each rank's GPU)")
    _format_args(p)


@command("predict",
         "classify images (files, folders, lists) with early exit into DIR/predictions.jsonl",
         _predict_args)
def _predict(args: argparse.Namespace) -> int:
    from .bulk_predict import predict_folder
    from .predictor import DEFAULT_BATCH_SIZE

    if not args.images and args.files_from is None:
        raise GFNetError("give images to predict: image files, folders, or --files-from LIST")
    thresholds = None
    if args.thresholds is not None:
        try:
            thresholds = [float(x) for x in args.thresholds.split(",")]
            if len(thresholds) == 1:  # one number: every step's, as in the Python API
                thresholds = thresholds[0]
        except ValueError:
            raise GFNetError(f"--thresholds {args.thresholds!r} is not a comma-separated list of numbers") from None
    r = predict_folder(args.checkpoint, args.images, out=args.out or "predict", files_from=args.files_from,
                       budget=args.budget, thresholds=thresholds,
                       target_macs=None if args.target_macs is None else args.target_macs * 1e6,
                       device=args.device, class_names=args.class_names,
                       batch_size=DEFAULT_BATCH_SIZE if args.batch_size is None else args.batch_size,
                       resize=not args.no_resize, workers=args.workers, fmt=args.fmt, pictures=args.pictures,
                       overwrite=args.overwrite, force=args.force, progress=not args.no_progress, log=print,
                       precision=args.precision or "fp32", layout=args.layout or "auto")
    skipped = f", {r['skipped']} already done" if r["skipped"] else ""
    print(f"{r['predicted']} images predicted, {r['errors']} unreadable{skipped} "
          f"({r['images_per_s']:.1f} images/s) -> {r['predictions']}")
    if r.get("merged"):
        print(f"every rank finished: merged into {r['merged']}")
    if r["errors"]:
        print(f"gfnet predict: {r['errors']} image(s) could not be read: their rows in {r['predictions']} "
              "hold the error", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------- flops
def _flops_args(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    p.add_argument("--checkpoint", metavar="CKPT", default=None,
                   help="count the model of a gfnet checkpoint instead (an imported official one also "
                        "shows the release's per-step figures)")


@command("flops", "per-step MACs/FLOPs of a preset (glance, focus steps, static baseline)",
         _flops_args)
def _flops(args: argparse.Namespace) -> int:
    if args.list_presets:
        return _list_presets()
    import json

    from .config import size_text
    from .flops import flops_summary, format_table

    if args.checkpoint:
        summary = flops_summary(checkpoint=args.checkpoint)
    else:
        summary = flops_summary(config_from_args(args))
    cfg, sf = summary.cfg, summary.counts
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        m = cfg.model
        print(format_table(sf, f"{cfg.preset}: backbone {m.backbone}, image {size_text(m.image_size)}, "
                               f"patch {m.patch_size}, T={m.max_steps} (per image)"))
        note = summary.official_text()
        if note:
            print(note)
    return 0


# ---------------------------------------------------------------------- report
def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="training output folder (after gfnet eval RUN --baseline ...)")
    p.add_argument("--baseline", metavar="CKPT", default=None,
                   help="static baseline checkpoint (default RUN/baseline.pt)")
    p.add_argument("--eval", metavar="JSON", default=None, dest="eval_json",
                   help="gfnet eval's summary (default RUN/eval/eval.json)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="where report.md and report.json go, pictures under DIR/report/ (default RUN)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    p.add_argument("--images", type=int, default=8, help="test images to draw the glance and patches of")
    p.add_argument("--passes", type=int, default=3, help="timed passes over the test images per engine")
    p.add_argument("--batch-sizes", default="16,64,128",
                   help="batch sizes of the throughput runs (comma-separated); each engine is judged at its best")
    p.add_argument("--max-images", type=int, default=2000,
                   help="test images in the throughput runs and the learned-vs-random comparison")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the run's run.threads)")


def _check_report_counts(args: argparse.Namespace) -> None:
    """--images >= 0, --passes and --max-images >= 1 (report, demo)."""
    for name in ("images", "passes", "max_images"):
        if getattr(args, name, 1) < (0 if name == "images" else 1):
            raise GFNetError(f"--{name.replace('_', '-')} must be {'>= 0' if name == 'images' else '>= 1'}")


@command("report",
         "report.md of a run: accuracy vs MACs against the static baseline, throughput, pictures",
         _report_args)
def _report(args: argparse.Namespace) -> int:
    from .device import pick_device
    from .demo import DEMO_CLAIMS, is_demo_run
    from .report import build_report

    _check_report_counts(args)
    try:
        batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    except ValueError:
        raise GFNetError(f"--batch-sizes {args.batch_sizes!r} is not a comma-separated list of integers") from None
    if not batch_sizes or min(batch_sizes) < 1:
        raise GFNetError("--batch-sizes must be positive integers")
    r = build_report(args.run, baseline=args.baseline, eval_json=args.eval_json, out=args.out,
                     device=pick_device(args.device), num_images=args.images, passes=args.passes,
                     batch_sizes=batch_sizes, max_images=args.max_images, threads=args.threads,
                     claims=DEMO_CLAIMS if is_demo_run(args.run) else None)  # a demo's run: its claims
    _print_report(r)
    return 0


def _print_report(r: dict) -> None:
    op, b = r["operating_point"], r["baseline"]
    print(f"static baseline: {b['test_accuracy']:.4f} at {b['macs'] / 1e6:.2f} M MACs")
    print(f"operating point: budget {op['budget']}, {op['accuracy']:.4f} at {op['avg_macs'] / 1e6:.2f} M MACs "
          f"({100 * op['macs_fraction']:.1f} % of the baseline's); dynamic throughput "
          f"{r['speedup_vs_baseline']:.2f}x the baseline's")
    # the demo's claims, checked against its targets (a run gfnet demo made); others have none
    for claim, ok in r.get("claims", {}).items():
        print(f"{claim}: {'met' if ok else 'NOT met'}")
    for warning in r.get("training", {}).get("warnings", []):
        print(f"warning: {warning}")
    print(f"wrote {r['files']['report']}")


# ---------------------------------------------------------------------- import-official
def _import_official_args(p: argparse.ArgumentParser) -> None:
    from .official.archs import OFFICIAL_ARCHS

    p.add_argument("checkpoint", metavar="FILE", help="an official GFNet checkpoint (released .pth.tar "
                                                      "or a file of the official train.py)")
    p.add_argument("--out", metavar="OUT.pt", required=True, help="the gfnet checkpoint to write")
    p.add_argument("--arch", choices=sorted(OFFICIAL_ARCHS), default=None,
                   help="the official model name (needed when the file has no model_name: train.py's files)")
    p.add_argument("--patch-size", type=int, default=None,
                   help="patch size P (needed when the file has no patch_size: train.py's --patch_size)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="T of a train.py file (its --T; default: the preset's); released files carry it")
    p.add_argument("--data", metavar="PATH", default=None,
                   help="ImageNet-layout folder (train/, val/) stored as the checkpoint's data.root")
    p.add_argument("--class-names", metavar="FILE", default=None,
                   help="names of the classes, one per line (or a JSON list / ImageNet index file), stored "
                        "in the checkpoint for predict and gfnet.load (without it: class indices)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="unpickle Python objects besides tensors (only for files you trust)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")


@command("import-official",
         "convert an official GFNet checkpoint (released or train.py's) into a gfnet checkpoint",
         _import_official_args)
def _import_official(args: argparse.Namespace) -> int:
    from .official.importer import import_official

    r = import_official(args.checkpoint, args.out, arch=args.arch, patch_size=args.patch_size,
                        max_steps=args.max_steps, allow_pickle=args.allow_pickle, force=args.force,
                        data_root=args.data, class_names=args.class_names)
    extra = "".join(f" {k}={v}" for k, v in r.overrides.items())
    print(f"{r.model_name}, patch {r.patch_size}, T={r.steps} ({r.source_format} checkpoint, stage {r.stage}) "
          f"-> preset {r.preset}{extra}")
    print("exit thresholds: " + ("the release's 39 budgets (gfnet eval --recalibrate to set your own)"
                                 if r.thresholds else "none (gfnet eval calibrates them)"))
    print(f"class names: {f'{r.class_names} stored' if r.class_names else 'none (predictions name class indices)'}")
    for n in r.notes:
        print(f"note: {n}")
    print(f"wrote {r.out}")
    return 0


# ---------------------------------------------------------------------- demo
def _demo_args(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--out", metavar="DIR", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--force", action="store_true",
                   help="go on in an OUT whose config.yaml records other model, data or schedule "
                        "settings (refused otherwise, naming the changes)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of every GFNet stage (the baseline then trains stage-1 + stage-3 epochs)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    p.add_argument("--images", type=int, default=8, help="test images to draw (report)")
    p.add_argument("--passes", type=int, default=3, help="timed passes per engine (report)")
    p.add_argument("--seeds", type=_int_list, default=None, metavar="S,S,...",
                   help="run the demo once per seed (and per --threads count), each into OUT/seed{s}-threads{n}, "
                        "and write the spread of every headline figure to OUT/spread.md")
    p.add_argument("--threads", type=_int_list, default=None, metavar="N,N,...",
                   help="with --seeds: the thread counts to run each seed with (default: run.threads, else "
                        "torch's current count)")
    p.add_argument("--collect", action="store_true",
                   help="with --seeds: train nothing, write OUT/spread.md from the runs already finished "
                        "(e.g. each run as its own process: --out OUT/seed{s}-threads{n} --seed s "
                        "--set run.threads=n)")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, not {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


@command("demo", "the main job end to end: baseline, GFNet on it, every budget, RUN/report.md",
         _demo_args)
def _demo(args: argparse.Namespace) -> int:
    """Everything `make demo` does, resumable: each step reuses what a previous run finished."""
    from .demo import run_demo, run_demo_seeds

    if args.list_presets:
        return _list_presets()
    _check_report_counts(args)
    cfg = config_from_args(args, _run_shortcuts(args))
    say = lambda msg: print(msg, flush=True)  # noqa: E731
    if args.seeds is None:
        if args.threads is not None:
            raise GFNetError("--threads goes with --seeds (for one run: --set run.threads=N)")
        if args.collect:
            raise GFNetError("--collect goes with --seeds (and --threads): the runs to collect")
        _print_report(run_demo(cfg, args.out, images=args.images, passes=args.passes, log=say,
                               force=args.force))
        return 0
    if any(n < 1 for n in args.threads or [1]):
        raise GFNetError("--threads takes thread counts of at least 1")
    import torch

    threads = args.threads or [cfg.run.threads or torch.get_num_threads()]
    rows = run_demo_seeds(cfg, args.out, args.seeds, threads, images=args.images, passes=args.passes,
                          collect_only=args.collect, log=say)
    print(f"\nevery claim met in {sum(r['claims_met'] for r in rows)} of {len(rows)} runs: "
          f"{Path(args.out) / 'spread.md'}")
    return 0


# ---------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="gfnet", description="GFNet: glance and focus networks")
    parser.add_argument("--version", action="version", version=f"gfnet {__version__}")
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
        hint = ""
        if args.command == "train" and getattr(args, "out", None):  # every epoch is checkpointed
            baseline = " --baseline" if args.baseline else ""
            hint = f"; continue with: gfnet train{baseline} --out {args.out} --resume"
        print(f"gfnet {args.command}: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # python -m gfnet.cli
    sys.exit(main())
