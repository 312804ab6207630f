"""Where a training run's weights start (``model.init_from``), when its first stage starts fresh.

- a static baseline checkpoint (``gfnet train --baseline``): both encoders start from its
  backbone (stage 1 only, as the paper starts from ImageNet-trained weights);
- a gfnet checkpoint (a finished run's ``stageK.pt``, or ``gfnet import-official``'s output):
  the whole model starts from it, at any stage. Every tensor must fit, except the class heads
  when ``model.num_classes`` differs (fine-tuning on your own classes): those start fresh.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .. import checkpoint as ckpt
from ..errors import CheckpointError

# the parameters that depend on the number of classes: encoders' own heads, classifier heads
CLASS_HEAD = re.compile(r"^((global|local)_encoder\.head\.|classifier\.heads\.)")


def init_from_gfnet_checkpoint(model: torch.nn.Module, ck: dict, path: str | Path, model_cfg: dict) -> list[str]:
    """Load a gfnet checkpoint's weights (``ck``, loaded from ``path``) into ``model`` (built from
    ``model_cfg``, a dict). Returns the class-head keys left at their fresh initialisation."""
    if ck.get("kind", "gfnet") != "gfnet":
        raise CheckpointError(f"model.init_from {str(path)!r} is a {ck.get('kind')!r} checkpoint, not a GFNet one")
    saved = dict(ck.get("config", {}).get("model", {}))
    heads_differ = saved.get("num_classes") != model_cfg.get("num_classes")
    if heads_differ:
        saved["num_classes"] = model_cfg.get("num_classes")
    ckpt.check_compatible({"config": {"model": saved}}, model_cfg, path)
    own = model.state_dict()
    state = dict(ck["model"])
    fresh = []
    if heads_differ:
        for k, v in state.items():
            if CLASS_HEAD.match(k) and k in own and own[k].shape != v.shape:
                state[k] = own[k]
                fresh.append(k)
    ckpt.load_model_state(model, state, path)
    return fresh


def warm_start(model: torch.nn.Module, path: str | Path, model_cfg: dict, stage: int) -> tuple[str, list[str]]:
    """Initialise ``model`` from ``path`` for a fresh start of ``stage``: (a one-line note, the
    class-head modules left at their fresh initialisation, e.g. ``["global_encoder.head"]``)."""
    ck = ckpt.load(path)
    if ck.get("kind") == "baseline":
        if stage != 1:
            raise CheckpointError(f"model.init_from {str(path)!r} is a static baseline: it can start "
                                  f"stage 1 only, not stage {stage}")
        ckpt.init_encoders_from_baseline(model, ck, path)
        return f"both encoders start from the static baseline {path}", []
    fresh = sorted({k.rsplit(".", 1)[0] for k in init_from_gfnet_checkpoint(model, ck, path, model_cfg)})
    note = f"the model starts from {path}"
    if fresh:
        note += f" (class heads start fresh: {', '.join(fresh)})"
    return note, fresh
