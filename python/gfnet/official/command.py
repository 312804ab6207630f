"""The ``gfnet import-official`` command: arguments and what it prints (logic: importer.py)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .archs import OFFICIAL_ARCHS

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
    p.add_argument("--allow-pickle", action="store_true",
                   help="unpickle Python objects besides tensors (only for files you trust)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")


def run(args: argparse.Namespace) -> int:
    from .importer import import_official

    r = import_official(args.checkpoint, args.out, arch=args.arch, patch_size=args.patch_size,
                        max_steps=args.max_steps, allow_pickle=args.allow_pickle, force=args.force,
                        data_root=args.data)
    extra = "".join(f" {k}={v}" for k, v in r.overrides.items())
    print(f"{r.model_name}, patch {r.patch_size}, T={r.steps} ({r.source_format} checkpoint, stage {r.stage}) "
          f"-> preset {r.preset}{extra}")
    print("exit thresholds: " + ("the release's 39 budgets (gfnet eval --recalibrate to set your own)"
                                 if r.thresholds else "none (gfnet eval calibrates them)"))
    for n in r.notes:
        print(f"note: {n}")
    print(f"wrote {r.out}")
    return 0
