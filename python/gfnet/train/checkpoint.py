"""Checkpoints: written atomically (temp file in the same folder, fsync, rename), loaded with
clear errors for missing, corrupt or mismatched files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

FORMAT = "gfnet-checkpoint-v1"


def stage_path(out_dir: str | Path, stage: int) -> Path:
    return Path(out_dir) / f"stage{stage}.pt"


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to unpickle is a corrupt file
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or not a gfnet checkpoint ({msg})") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a gfnet checkpoint (no {FORMAT!r} marker)")
    return ck


def check_compatible(ck: dict[str, Any], model_cfg: dict[str, Any], path: str | Path) -> None:
    """Refuse a checkpoint whose model config differs from the current one."""
    saved = ck.get("config", {}).get("model", {})
    ignore = {"pretrained", "init_from"}  # how the weights started, not what the model is
    diff = sorted(k for k in set(saved) | set(model_cfg)
                  if k not in ignore and _norm(saved.get(k)) != _norm(model_cfg.get(k)))
    if diff:
        details = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs config {model_cfg.get(k)!r}" for k in diff)
        raise CheckpointError(f"checkpoint {str(path)!r} does not match the model config ({details})")


def _norm(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    return v


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit the model: "
                              f"{' '.join(x.strip() for x in first[:3])}") from None
