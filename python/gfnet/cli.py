"""The ``gfnet`` command line: ``gfnet train`` (later: eval, predict, flops).

Each subcommand is a function registered in ``COMMANDS`` with the arguments it adds to its
own subparser, so new subcommands plug in without touching the others.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

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
    p.add_argument("--seed", type=int, default=None, help="random seed (run.seed)")
    p.add_argument("--list-presets", action="store_true", help="list the presets and exit")


def config_from_args(args: argparse.Namespace, extra: dict | None = None):
    from .config import build_config, load_yaml, parse_overrides

    preset = args.preset
    if preset is None and not (args.config and "preset" in load_yaml(args.config)):
        preset = "digits"
    overrides = parse_overrides(args.overrides)
    for key, val in (("data.root", args.data), ("run.device", args.device), ("run.seed", args.seed)):
        if val is not None:
            overrides[key] = val
    if args.pretrained:
        overrides["model.pretrained"] = True
    overrides.update(extra or {})
    return build_config(preset, args.config, overrides)


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


def _train(args: argparse.Namespace) -> int:
    if args.list_presets:
        return _list_presets()
    extra: dict = {}
    if args.epochs is not None:
        extra.update({f"optim.epochs_stage{k}": args.epochs for k in (1, 2, 3)})
    if args.batch_size is not None:
        extra["optim.batch_size"] = args.batch_size
    if args.no_progress:
        extra["run.progress"] = False
    cfg = config_from_args(args, extra)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    if not args.out:
        raise GFNetError("--out DIR is required (where checkpoints and metrics go)")
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
