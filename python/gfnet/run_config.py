"""A run folder remembers its config: ``RUN/config.yaml``.

Training (``gfnet train``, the baseline, ``gfnet demo``) writes the resolved config there as it
starts, after checking the folder. A later ``gfnet train --out RUN --resume`` (or ``--baseline``,
or a later ``--stage``) starts from it, so no flag needs repeating; flags still given are laid
over it, and :func:`check_run_config` refuses a command whose config differs from it in what
the run was trained on (the model, the data, the schedule: every section but ``run``, less
:data:`FREE_KEYS`) unless ``force``, naming each change. eval, report and predict read the
same config from the checkpoints, which hold a copy of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import PRESETS, Config, apply_dict, get_preset, image_hw, load_yaml
from .errors import ConfigError
from .files import write_atomic

RUN_CONFIG = "config.yaml"
# keys a resumed run may change without --force: how the run is executed (the run section),
# how a fresh stage's weights start (a resumed stage has its own), how data is loaded, and the
# exit calibration of gfnet eval; none of them changes what was trained on
FREE_SECTIONS = ("run",)
FREE_KEYS = frozenset(
    {
        "preset",
        "model.init_from",
        "model.pretrained",
        "model.backbone_weights",
        "data.num_workers",
        "data.download",
        "data.calibration",
        "data.calibration_samples",
        "data.calibration_augment",
    }
)
CHECKPOINT_FILES = ("stage1.pt", "stage2.pt", "stage3.pt", "baseline.pt")
_HEADER = (
    "# gfnet run config: the resolved config this run trains with, written as its training\n"
    "# started. `gfnet train --out RUN --resume` and `gfnet train --baseline --out RUN` start\n"
    "# from it.\n"
)


def run_config_path(out: str | Path) -> Path:
    return Path(out) / RUN_CONFIG


def save_run_config(out: str | Path, cfg: Config) -> Path:
    """Writes ``cfg`` as ``out/config.yaml`` (atomically)."""
    import yaml

    path = run_config_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, (_HEADER + yaml.safe_dump(cfg.to_dict(), sort_keys=False)).encode())


def load_run_config(out: str | Path) -> Config | None:
    """The config ``out/config.yaml`` holds (laid over the preset it names, so a field added to
    gfnet since takes the preset's value), or None when there is none."""
    path = run_config_path(out)
    if not path.is_file():
        return None
    saved = load_yaml(path)
    name = saved.get("preset")
    cfg = get_preset(name) if isinstance(name, str) and name in PRESETS else Config()
    try:
        apply_dict(cfg, {k: v for k, v in saved.items() if k != "preset"})
        if isinstance(name, str):
            cfg.preset = name
        return cfg.validate()
    except ConfigError as e:
        raise ConfigError(
            f"the run's config {str(path)!r} is not usable ({e}); fix or delete it"
        ) from None


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def _comparable(key: str, value: Any) -> Any:
    if key == "data.root" and value:
        return str(Path(value).expanduser().resolve())
    if key == "model.image_size":
        return list(image_hw(value if isinstance(value, int) else tuple(value)))
    if isinstance(value, (list, tuple)):
        return [
            float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
            for v in value
        ]
    return value


def _is_free(key: str) -> bool:
    return key in FREE_KEYS or key.split(".", 1)[0] in FREE_SECTIONS


def config_changes(stored: Config, new: Config) -> list[str]:
    """ "key: stored -> new" for every trained-on key (module docstring) that differs."""
    old_flat, new_flat = _flatten(stored.to_dict()), _flatten(new.to_dict())
    changes = []
    for key in old_flat.keys() | new_flat.keys():
        if _is_free(key):
            continue
        a, b = old_flat.get(key), new_flat.get(key)
        if _comparable(key, a) != _comparable(key, b):
            changes.append(f"{key}: {a!r} -> {b!r}")
    return sorted(changes)


def holds_checkpoints(out: str | Path) -> bool:
    return any((Path(out) / name).is_file() for name in CHECKPOINT_FILES)


def check_run_config(out: str | Path, cfg: Config, *, force: bool = False) -> None:
    """Refuses ``cfg`` for the run in ``out`` when its config.yaml records another one and
    something was trained under it (a checkpoint is there), unless ``force``."""
    stored = load_run_config(out)
    if stored is None or force or not holds_checkpoints(out):
        return
    changes = config_changes(stored, cfg)
    if changes:
        raise ConfigError(
            f"this command's config differs from the run's ({str(run_config_path(out))!r}) in "
            f"what it was trained on: {'; '.join(changes)}. Continue the run with its own config "
            f"(`gfnet train --out {out} --resume`, with no other settings), choose another --out, "
            "or pass --force to go on with the new settings (config.yaml is then rewritten)"
        )


__all__ = [
    "RUN_CONFIG",
    "check_run_config",
    "config_changes",
    "holds_checkpoints",
    "load_run_config",
    "run_config_path",
    "save_run_config",
]
