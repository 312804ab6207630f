"""Checkpoints: written atomically (temp file in the same folder, fsync, rename), loaded with
clear errors for missing, corrupt or mismatched files, and turned back into models.

Training writes them (``gfnet.train``) and everything else reads them (evaluation, prediction,
the report), so they live at the top of the package, not under ``train/``: loading a model for
inference never imports the trainer.

Two kinds share the format: ``"gfnet"`` (``stage{k}.pt``, one per training stage) and
``"baseline"`` (``baseline.pt``, the static baseline of ``gfnet train --baseline``).

Content hash: every checkpoint written since the hash was introduced holds ``content_sha256``,
one sha256 digest over everything else in it (:func:`content_digest`: each tensor's dtype,
shape and bytes, each plain value, with its place in the dict), and :func:`load` recomputes it:
bytes flipped on disk or in a copy, which unpickle without complaint, are a CheckpointError
instead of a model running on altered weights. A checkpoint without the key (written before)
loads with a :class:`UncheckedCheckpointWarning`; saving it again (``gfnet eval`` storing
thresholds, a resumed stage) adds the hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from .config import PRESETS, Config, ModelConfig, apply_dict, get_preset, image_hw
from .errors import CheckpointError
from .files import write_atomic
from .models import build_model
from .models.static import build_static_baseline

FORMAT = "gfnet-checkpoint-v1"


def stage_path(out_dir: str | Path, stage: int) -> Path:
    return Path(out_dir) / f"stage{stage}.pt"


HASH_KEY = "content_sha256"


class UncheckedCheckpointWarning(UserWarning):
    """A checkpoint without a content hash was loaded: its contents could not be verified."""


def _feed(h: Any, where: str, x: Any) -> None:
    """Adds ``x`` (found at ``where`` in the checkpoint) to the digest ``h``."""
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu().contiguous()
        h.update(f"{where}\0tensor\0{t.dtype}\0{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(x, dict):
        h.update(f"{where}\0dict\0{len(x)}\n".encode())
        for k in sorted(x, key=repr):  # key order is no part of the content
            _feed(h, f"{where}/{k!r}", x[k])
    elif isinstance(x, (list, tuple)):
        h.update(f"{where}\0{type(x).__name__}\0{len(x)}\n".encode())
        for i, v in enumerate(x):
            _feed(h, f"{where}[{i}]", v)
    elif x is None or isinstance(x, (bool, int, float, str, bytes)):
        h.update(f"{where}\0{type(x).__name__}\0{x!r}\n".encode())
    else:  # nothing else unpickles under weights_only; its type at least is covered
        h.update(f"{where}\0{type(x).__name__}\n".encode())


def content_digest(ck: dict[str, Any]) -> str:
    """sha256 (hex) of a checkpoint's contents, all but its own ``content_sha256``."""
    h = hashlib.sha256()
    _feed(h, "", {k: v for k, v in ck.items() if k != HASH_KEY})
    return h.hexdigest()


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    """Writes the checkpoint ``obj`` with its content hash, atomically (``gfnet.files.write_atomic``:
    a temp file beside it, fsync, rename; a full disk is a CheckpointError naming the file and
    the old file stays). It is serialised in memory first, so a failed write is a plain OSError
    and never a half-written zip archive."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({**obj, HASH_KEY: content_digest(obj)}, buffer)
    write_atomic(path, buffer.getbuffer(), error=CheckpointError)


_PICKLED_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|global:?) ([\w.]+)")


def _unpickling_error(path: Path, e: BaseException) -> CheckpointError:
    """The CheckpointError of a file torch.load(weights_only=True) refused. A file holding pickled
    Python objects gets our own advice: torch's (retry with weights_only=False) would run
    whatever code the file names, which gfnet never does."""
    text = str(e).strip()
    if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in text:
        found = _PICKLED_GLOBAL.search(text)
        what = f" (it names {found.group(1)})" if found else ""
        return CheckpointError(
            f"checkpoint {str(path)!r} holds pickled Python objects{what}, not only tensors and plain values: "
            "gfnet loads checkpoints without running code from them, so it does not read this file. If it "
            "comes from the official GFNet code, convert it with `gfnet import-official`; if it is a "
            "checkpoint of your own you trust, load it in your own Python and save its tensors and plain "
            "values again")
    first = text.splitlines()[0] if text else type(e).__name__
    return CheckpointError(f"checkpoint {str(path)!r} is corrupt or not a gfnet checkpoint ({first})")


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A gfnet checkpoint's dict, its content hash checked (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to unpickle is a corrupt file
        raise _unpickling_error(path, e) from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a gfnet checkpoint (no {FORMAT!r} marker)")
    stored = ck.get(HASH_KEY)
    if stored is None:
        warnings.warn(f"checkpoint {str(path)!r} has no content hash (it was written by an older gfnet): "
                      "its weights cannot be checked for corruption; saving it again adds one",
                      UncheckedCheckpointWarning, stacklevel=2)
    elif stored != content_digest(ck):
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt: its contents do not match the sha256 "
                              "stored in it when it was written (bytes changed on disk or in a copy); restore "
                              "it from a backup or train that stage again")
    return ck


# model fields that say how the weights started or how images are prepared for an evaluation,
# not what the model is: a resumed run may change them
_NOT_THE_MODEL = {"pretrained", "init_from", "backbone_weights", "eval_crop_fraction",
                  "eval_interpolation"}


def check_compatible(ck: dict[str, Any], model_cfg: dict[str, Any], path: str | Path) -> None:
    """Refuse a checkpoint whose model config differs from the current one. Fields the
    checkpoint predates (absent from it) are not compared; image sizes compare as (H, W)."""
    saved = ck.get("config", {}).get("model", {})
    diff = sorted(k for k in saved
                  if k not in _NOT_THE_MODEL and _norm(k, saved[k]) != _norm(k, model_cfg.get(k)))
    if diff:
        details = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs config {model_cfg.get(k)!r}" for k in diff)
        raise CheckpointError(f"checkpoint {str(path)!r} does not match the model config ({details})")


def _norm(key: str, v: Any) -> Any:
    if key == "image_size" and v is not None:
        return list(image_hw(v))
    if isinstance(v, (list, tuple)):
        return [_norm("", x) for x in v]
    return v


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit the model: "
                              f"{' '.join(x.strip() for x in first[:3])}") from None


# ---------------------------------------------------------------------- checkpoints -> models
def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a training output folder (its latest stage: 3, else 2, else 1)."""
    p = Path(path)
    if p.is_dir():
        for k in (3, 2, 1):
            if stage_path(p, k).is_file():
                return stage_path(p, k)
        raise CheckpointError(f"folder {str(p)!r} holds no stage checkpoint (stage1.pt .. stage3.pt)")
    if not p.exists():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    return p


def load_checkpoint_model(path: str | Path, device: torch.device | str = "cpu",
                          overrides: dict[str, Any] | None = None):
    """(GFNet in eval mode on ``device``, config, checkpoint dict) from a gfnet checkpoint file or
    run folder; ``overrides``: dotted config keys applied over the checkpoint's config, e.g.
    ``{"data.root": ...}`` for data that moved."""
    p = resolve_checkpoint(path)
    ck = load(p)
    if ck.get("kind") == "baseline":
        raise CheckpointError(f"{str(p)!r} is a static baseline checkpoint (gfnet train --baseline), "
                              "not a GFNet one")
    cfg = checkpoint_config(ck, p, overrides)
    model = build_model(cfg.model, cfg.run.kernel_backend or None)
    load_model_state(model, ck["model"], p)
    return model.to(device).eval(), cfg, ck


def checkpoint_config(ck: dict[str, Any], path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """The validated config a checkpoint was trained with. It is laid over the preset it names,
    so an evaluation-preprocessing field the checkpoint predates takes that preset's value (the
    digits preset's, say), not the bare default. A model field it predates that shapes the
    network (the official variants' options: classifier_shared_head, policy_conv_bias, ...)
    takes its default instead: the network the checkpoint was trained as, before the field
    existed, whatever the preset now says."""
    try:
        saved = ck["config"]
        preset = saved.get("preset")
        cfg = get_preset(preset) if isinstance(preset, str) and preset in PRESETS else Config()
        saved_model = saved.get("model", {})
        defaults = ModelConfig()
        for f in dataclasses.fields(ModelConfig):
            if f.name not in saved_model and f.name not in _NOT_THE_MODEL:
                setattr(cfg.model, f.name, getattr(defaults, f.name))  # defaults is ours alone: no copy
        apply_dict(cfg, saved)
        if overrides:
            apply_dict(cfg, overrides)
        return cfg.validate()
    except (KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r} has no usable config ({e})") from None


def check_baseline_checkpoint(ck: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """``ck`` (loaded from ``path``) if it is a finished static-baseline checkpoint, or a
    CheckpointError saying what it is instead."""
    if ck.get("kind") != "baseline":
        raise CheckpointError(f"{str(path)!r} is not a baseline checkpoint (gfnet train --baseline)")
    if not ck.get("done"):
        raise CheckpointError(f"baseline checkpoint {str(path)!r} is not finished (epoch {ck.get('epoch')}/"
                              f"{ck.get('epochs')}); run gfnet train --baseline --resume")
    return ck


def load_baseline_checkpoint(path: str | Path) -> dict[str, Any]:
    """A finished static-baseline checkpoint, or a CheckpointError saying what it is instead."""
    return check_baseline_checkpoint(load(path), path)


def load_baseline_model(path: str | Path, device: torch.device | str = "cpu"):
    """(StaticBaseline in eval mode on ``device``, config, checkpoint) of a finished baseline."""
    ck = load_baseline_checkpoint(path)
    cfg = checkpoint_config(ck, path)
    model = build_static_baseline(cfg.model)
    load_model_state(model, ck["model"], path)
    return model.to(device).eval(), cfg, ck


def init_encoders_from_baseline(model, ck: dict[str, Any], path: str | Path) -> None:
    """Both encoders of a GFNet ``model`` start from a finished static baseline's backbone (with
    its head), as the paper's start from ImageNet-trained weights: GFNet then builds on the
    network a user already has. ``ck``: the checkpoint loaded from ``path``. Checked against the
    model's backbone config."""
    check_baseline_checkpoint(ck, path)
    saved = ck.get("config", {}).get("model", {})
    mine = model.cfg
    for key in ("backbone", "width", "in_channels", "num_classes"):
        if saved.get(key) != getattr(mine, key):
            raise CheckpointError(f"model.init_from {str(path)!r}: its {key} is {saved.get(key)!r}, "
                                  f"the model's {getattr(mine, key)!r}")
    prefix = "backbone."
    state = {k[len(prefix):]: v for k, v in ck["model"].items() if k.startswith(prefix)}
    for encoder in (model.global_encoder, model.local_encoder):
        load_model_state(encoder, state, path)
