"""``gfnet import-official``: an official GFNet checkpoint -> a gfnet checkpoint.

Two official formats are read:

- the released files (``model_name``, ``patch_size``, the four state dicts, ``flops``: cumulative
  multiply-adds of 1 .. T steps, ``model_flops``/``policy_flops``/``fc_flops``,
  ``anytime_classification``: top-1 % per step, ``dynamic_threshold``: 39 budgets x T exit
  thresholds, ``budgeted_batch_classification``: [average flops, top-1 %] per budget);
- the files the official train.py writes (``epoch``, the state dicts, ``acc``, ``best_acc``,
  ``optimizer``, ``ppo_optimizer``, ``policy`` -- None after stage 1): no ``model_name``, so
  ``arch`` and ``patch_size`` must be given.

The output is a finished gfnet checkpoint (``stage`` 3; 1 or 2 for train.py files of those
stages) that every command reads: the model's weights in our layout under the preset chosen
from ``model_name`` and ``patch_size``, the release's exit thresholds as its stored
calibration (``gfnet eval`` and ``predict --budget k`` use them until ``--recalibrate``), the
release's own figures under ``"official"``, and the class names when a names file is given
(``class_names``; the release stores none). Everything is checked before anything is written;
the file is written atomically.
"""

from __future__ import annotations

import math
import pickle
import re
from dataclasses import dataclass, field
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .archs import OfficialArch, official_arch, preset_for
from .keys import PARTS, check_against, strip_module_prefix, translate

RELEASED_FIELDS = ("model_name", "patch_size", "flops")
FIGURE_FIELDS = ("flops", "model_flops", "policy_flops", "fc_flops", "anytime_classification",
                 "budgeted_batch_classification", "dynamic_threshold")
NUM_OFFICIAL_BUDGETS = 39


@dataclass
class ImportResult:
    out: Path
    preset: str
    overrides: dict[str, Any]
    model_name: str
    patch_size: int
    steps: int
    source_format: str  # "released" | "train.py"
    stage: int
    thresholds: bool  # whether the official exit thresholds came along
    class_names: int = 0  # how many class names were stored (0: none)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------- reading
def read_official(path: str | Path, *, allow_pickle: bool = False) -> dict[str, Any]:
    """The checkpoint's top-level dict. Loaded with torch.load(weights_only=True) unless
    ``allow_pickle`` (only for files you trust: unpickling runs code)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"official checkpoint {str(p)!r} does not exist")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:  # noqa: BLE001 - any failure to read it is reported in one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        if isinstance(e, pickle.UnpicklingError) and ("weights_only" in str(e).lower().replace(" ", "_")
                                                      or "Unsupported global" in str(e)):
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
            what = f" ({found[1]})" if found else ""
            raise CheckpointError(f"{str(p)!r} holds Python objects besides tensors{what}; "
                                  "if you trust the file, pass --allow-pickle (unpickling runs its code)") from None
        raise CheckpointError(f"{str(p)!r} is corrupt, truncated or not a PyTorch file "
                              f"({type(e).__name__}: {first})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{str(p)!r} is not an official GFNet checkpoint (it holds a "
                              f"{type(obj).__name__}, not a dict)")
    if obj.get("format", "").startswith("gfnet-checkpoint"):
        raise CheckpointError(f"{str(p)!r} is already a gfnet checkpoint: use it directly")
    missing = [f for f, _ in PARTS if f not in obj]
    if missing:
        keys = ", ".join(sorted(map(str, obj))[:6]) or "nothing"
        raise CheckpointError(f"{str(p)!r} is not an official GFNet checkpoint: no {', '.join(missing)} "
                              f"(it holds {keys})")
    for f, _ in PARTS:
        if obj[f] is not None and not isinstance(obj[f], dict):
            raise CheckpointError(f"{str(p)!r}: {f} is a {type(obj[f]).__name__}, not a state dict")
    return obj


def _floats(x: Any, what: str) -> list:
    """A tensor / list / number of the release's figures as nested Python floats."""
    if isinstance(x, torch.Tensor):
        return x.detach().double().cpu().tolist()
    if isinstance(x, (list, tuple)):
        return [_floats(v, what) for v in x]
    if hasattr(x, "tolist") and not isinstance(x, (int, float)):  # numpy arrays and scalars
        return _floats(x.tolist(), what)
    try:
        return float(x)  # type: ignore[return-value]
    except (TypeError, ValueError):
        raise CheckpointError(f"official field {what} holds a {type(x).__name__}, not numbers") from None


def _identify(ck: dict[str, Any], source: str, arch: str | None, patch_size: int | None,
              max_steps: int | None) -> tuple[OfficialArch, int, int, str, list | None]:
    """(official architecture, patch size, T, format, the released flops as floats -- None for
    a train.py file) from the file and the caller's options."""
    released = "model_name" in ck
    name = ck.get("model_name")
    if released:
        if arch and arch != name:
            raise CheckpointError(f"--arch {arch} contradicts the checkpoint's model_name {name!r}")
        for f in RELEASED_FIELDS:
            if f not in ck:
                raise CheckpointError(f"{source} has a model_name but no {f}: not a complete released checkpoint")
    else:
        if not arch:
            raise CheckpointError(f"{source} has no model_name (a train.py checkpoint?): "
                                  "pass --arch (e.g. resnet50) and --patch-size")
        name = arch
    if not isinstance(name, str):
        raise CheckpointError(f"model_name is a {type(name).__name__}, not a name")
    info = official_arch(name)  # unknown model_name -> error listing the known ones
    p = ck.get("patch_size") if released else patch_size
    if released and patch_size is not None and patch_size != p:
        raise CheckpointError(f"--patch-size {patch_size} contradicts the checkpoint's patch_size {p}")
    if p is None:
        raise CheckpointError(f"{source} has no patch_size: pass --patch-size (the official train.py's "
                              "--patch_size, e.g. 96)")
    try:
        p = int(p)
    except (TypeError, ValueError):
        raise CheckpointError(f"patch_size {p!r} is not a number") from None
    flops = None
    if released:
        flops = _floats(ck["flops"], "flops")
        steps = len(flops)
        if max_steps is not None and max_steps != steps:
            raise CheckpointError(f"--max-steps {max_steps} contradicts the checkpoint's {steps} steps "
                                  "(the length of its flops)")
    else:
        steps = max_steps if max_steps is not None else 0  # 0: the preset's T
    return info, p, steps, "released" if released else "train.py", flops


def _stage_of(ck: dict[str, Any], fmt: str) -> int:
    """Which training stage produced the file: train.py saves policy=None after stage 1 and
    no SGD optimiser in stage 2."""
    if fmt == "released":
        return 3
    if ck.get("policy") is None:
        return 1
    return 2 if ck.get("optimizer") is None else 3


# ---------------------------------------------------------------------- converting
@dataclass
class Converted:
    """An official checkpoint as this project's model (nothing written yet)."""

    model: Any  # GFNet, weights loaded, train mode
    config: Any  # Config
    preset: str
    overrides: dict[str, Any]
    official: dict[str, Any]  # the release's identity and figures
    stage: int
    notes: list[str] = field(default_factory=list)


def convert(ck: dict[str, Any], *, source: str = "checkpoint", arch: str | None = None,
            patch_size: int | None = None, max_steps: int | None = None) -> Converted:
    """An official checkpoint's dict (as read_official returns it) -> our model with its
    weights; CheckpointError on anything that does not fit."""
    from ..config import build_config
    from ..models import build_model

    info, p, steps, fmt, flops = _identify(ck, source, arch, patch_size, max_steps)
    name = info.model_name
    stage = _stage_of(ck, fmt)
    preset, overrides = preset_for(name, p)
    cfg = build_config(preset, overrides=overrides)
    other_steps = steps and steps != cfg.model.max_steps
    steps = steps or cfg.model.max_steps
    if cfg.model.classifier == "concat" and not 2 <= steps <= 5:
        raise CheckpointError(f"{name} has heads for 2 .. 5 steps, not {steps}")
    if other_steps:
        overrides["model.max_steps"] = steps
        cfg = build_config(preset, overrides=overrides)

    notes: list[str] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(cfg.model)
    target = model.state_dict()
    parts = {f: strip_module_prefix(ck[f]) if ck[f] is not None else {} for f, _ in PARTS}
    if stage == 1:  # train.py after stage 1 saves no policy: ours starts fresh, stage 2 trains it
        parts["policy"] = {}
        notes.append("a stage-1 file: the policy starts untrained (train stage 2 from this checkpoint)")
    mapped, unknown, dropped = translate(parts, info.layout, steps)
    if stage == 1:
        mapped.update({k: (f"(fresh) {k}", v) for k, v in target.items() if k.startswith("policy.")})
    state = check_against(mapped, unknown, target, f"{source} ({name}, patch {p})")
    model.load_state_dict(state, strict=True)
    if dropped:
        notes.append(f"dropped {len(dropped)} official tensors never used at T={steps} "
                     f"({', '.join(sorted({d.split(':')[1].split('.')[0] for d in dropped}))}: heads for more steps)")
    official: dict[str, Any] = {"model_name": name, "patch_size": p, "steps": steps, "format": fmt,
                                "paper_name": info.paper_name}
    if flops is not None:
        official["flops"] = flops
    for f in FIGURE_FIELDS:
        if f not in official and ck.get(f) is not None:
            official[f] = _floats(ck[f], f)
    for f in ("epoch", "acc", "best_acc"):
        if isinstance(ck.get(f), (int, float, torch.Tensor)):
            official[f] = _floats(ck[f], f)
    if fmt == "released" and "dynamic_threshold" in official:
        thr = official["dynamic_threshold"]
        if (not isinstance(thr, list) or len(thr) != NUM_OFFICIAL_BUDGETS
                or any(not isinstance(r, list) or len(r) != steps for r in thr)):
            rows = len(thr) if isinstance(thr, list) else "?"
            cols = len(thr[0]) if isinstance(thr, list) and thr and isinstance(thr[0], list) else "?"
            raise CheckpointError(f"{source}: dynamic_threshold has shape ({rows}, {cols}), "
                                  f"expected ({NUM_OFFICIAL_BUDGETS}, {steps})")
    elif fmt == "released":
        notes.append("no dynamic_threshold in the file: `gfnet eval` calibrates thresholds itself")
    return Converted(model, cfg, preset, overrides, official, stage, notes)


def official_calibration(official: dict[str, Any], step_macs: list[float]):
    """The release's 39 x T thresholds as a stored calibration of this model. Its step MACs
    are ours (fvcore): `gfnet eval` compares them to decide whether stored thresholds are
    current, and prices every exit with them."""
    from ..exits import BudgetPoint, Calibration, budget_q, geometric_fractions

    steps = official["steps"]
    cal = Calibration("official", 0, list(step_macs), details={
        "source": "the release's dynamic_threshold",
        "how": "the official inference.py (eval_mode 2): up to 200000 random ImageNet training images with "
               "training augmentation; a step's threshold is the confidence of the last image that exits "
               "there (1e8, here inf, where nobody does)",
    })
    for b in range(1, NUM_OFFICIAL_BUDGETS + 1):
        row = official["dynamic_threshold"][b - 1][:steps - 1]
        thresholds = [math.inf if t >= 1e7 else float(t) for t in row]  # the release's 1e8: never
        q = budget_q(b)
        cal.points.append(BudgetPoint(b, q, geometric_fractions(q, steps), thresholds, [], math.nan))
    if official.get("budgeted_batch_classification") is not None:
        cal.details["official_budgeted_batch_classification"] = official["budgeted_batch_classification"]
    return cal


# ---------------------------------------------------------------------- importing
def import_official(path: str | Path, out: str | Path, *, arch: str | None = None,
                    patch_size: int | None = None, max_steps: int | None = None,
                    allow_pickle: bool = False, force: bool = False, data_root: str | None = None,
                    class_names: str | Path | Sequence[str] | None = None) -> ImportResult:
    """Read, check, translate and write (atomically, after every check); see the module docstring.
    ``data_root``: the ImageNet-layout folder the checkpoint's config points to (data.root).
    ``class_names``: a names file (``data.class_names.read_class_names``: one per line, a JSON
    list or ImageNet index file) or a list, one name per class, stored in the checkpoint."""
    from .. import checkpoint as ck_io
    from ..exits import CKPT_KEY
    from ..data.class_names import class_names_from
    from ..flops import count_step_flops

    path, out = Path(path), Path(out)
    if out.is_dir():
        raise CheckpointError(f"{str(out)!r} is a folder; --out names the checkpoint file to write")
    if out.exists() and not force:
        raise CheckpointError(f"{str(out)!r} exists; pass --force to replace it")
    ck = read_official(path, allow_pickle=allow_pickle)
    c = convert(ck, source=repr(str(path)), arch=arch, patch_size=patch_size, max_steps=max_steps)
    official = dict(c.official, source_file=str(path.resolve()))
    if data_root:
        c.config.data.root = str(data_root)
    names = None if class_names is None else class_names_from(class_names, c.config.model.num_classes)
    obj = {
        "format": ck_io.FORMAT, "kind": "gfnet", "stage": c.stage, "epoch": 0, "epochs": 0, "done": True,
        "world_size": 1, "config": c.config.to_dict(), "model": c.model.state_dict(),
        "optimizer": None, "scheduler": None, "scaler": None, "rng": [], "official": official,
        "class_names": names,
    }
    if "dynamic_threshold" in official and official["format"] == "released":
        sf = count_step_flops(c.model, static=False)
        obj[CKPT_KEY] = official_calibration(official, [float(m) for m in sf.macs]).to_dict()
    ck_io.save_atomic(obj, out)
    return ImportResult(out, c.preset, c.overrides, official["model_name"], official["patch_size"],
                        official["steps"], official["format"], c.stage, CKPT_KEY in obj, len(names or ()), c.notes)


__all__ = ["Converted", "ImportResult", "convert", "import_official", "official_calibration", "read_official"]
