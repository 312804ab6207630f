"""Per-step FLOPs of a GFNet (fvcore, cross-checked with torch.utils.flop_counter) and the exact
adaptive FLOPs of a run.

Counting convention. fvcore counts one fused multiply-add as one "flop", i.e. it counts MACs,
the unit the GFNet paper (and torchvision's model table) report as "FLOPs"/"MACs". We count the
multiply-adds of convolutions, linear layers, matmuls and GRU cells only (batch norm, pooling
and activations are not counted, as in the paper's figures). ``torch.utils.flop_counter``
counts 2 FLOPs per multiply-add; the two agree when that factor is taken into account.
FLOPs below always means 2 x MACs.

Steps (batch 1, at the preset's sizes; a step's count does not depend on the image size,
since the glance and every focus patch are P x P whatever the image, H x W or S x S):
- step 1, the glance: global encoder on the P x P glance + the classifier's first step;
- step t > 1, a focus: policy (state encoder, GRU cell, actor/critic heads) + local encoder on
  the P x P patch + the classifier's step t (its input grows with t for the concat classifier).
Patch extraction (crop_resize) does no multiply-adds worth counting (a resize of C x P x P
outputs with 16 taps at most, < 0.5 % of any backbone here) and is left out, as in the paper.
The backbones' own heads on every step's features are a training loss only and not counted.

Average FLOPs of a run = sum over steps k of (samples that computed step k) x (FLOPs of step k)
/ samples, computed from the exit counts the dynamic engine really produced.

fvcore is needed only to count: ``gfnet flops``, ``gfnet eval`` and the report need it and say
so (:class:`FvcoreMissingError`); what only reports MACs (the predictor, the benchmarks) asks
:func:`fvcore_available` first and shows :data:`FVCORE_MISSING` instead of a number.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import GFNetError
from .models.gfnet import GFNet

# what a MACs column shows where fvcore is not installed
FVCORE_MISSING = "fvcore not installed"


class FvcoreMissingError(GFNetError):
    """Counting MACs was asked for and fvcore cannot be imported."""


@functools.cache
def fvcore_available() -> bool:
    """True when fvcore imports (checked once per process)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fvcore's import uses the deprecated torch.jit.script
            import fvcore.nn  # noqa: F401
    except ImportError:
        return False
    return True


def require_fvcore(what: str = "counting MACs") -> None:
    """Raises FvcoreMissingError, naming ``what`` needed it, when fvcore is not installed."""
    if not fvcore_available():
        raise FvcoreMissingError(f"{what} needs fvcore, which is not installed (pip install fvcore); "
                                 "gfnet predict and the predictor run without it, with no MACs")


# ---------------------------------------------------------------------- step modules
class _Encoder(nn.Module):
    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.b = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat, _fmap = self.b(x)
        return feat


class _Policy(nn.Module):
    def __init__(self, model: GFNet):
        super().__init__()
        self.p = model.policy

    def forward(self, fmap: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        action, _value, _h = self.p(fmap, h)
        return action


class _Classifier(nn.Module):
    def __init__(self, model: GFNet, step: int):
        super().__init__()
        self.m = model
        self.step = step

    def forward(self, feat: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        logits, _ = self.m.classifier(feat, cls, self.step, self.m.global_encoder.head)
        return logits


class _Static(nn.Module):
    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.b = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat, _ = self.b(x)
        return self.b.head(feat)


@contextmanager
def _in_eval_mode(module: nn.Module) -> Iterator[None]:
    """``module`` and every submodule in eval mode, each given back its own mode afterwards.
    ``module.train(was)`` would not do: the counting wrappers above are new modules (in training
    mode), and restoring theirs would switch every module of the model they wrap to training."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _parts(model: GFNet) -> dict[str, tuple[nn.Module, tuple[torch.Tensor, ...]]]:
    """The model's parts with batch-1 inputs at the config's sizes: encoders, policy and the
    classifier at each step (step t's state is the one after steps 0 .. t-1)."""
    cfg = model.cfg
    P, C = cfg.patch_size, cfg.in_channels
    p = next(model.parameters())
    x = torch.zeros(1, C, P, P, dtype=p.dtype, device=p.device)
    fmap = torch.zeros(1, *model.fmap_shape, dtype=p.dtype, device=p.device)
    h = model.policy.init_hidden(1, p.device, p.dtype)
    parts: dict[str, tuple[nn.Module, tuple[torch.Tensor, ...]]] = {
        "global_encoder": (_Encoder(model.global_encoder), (x,)),
        "local_encoder": (_Encoder(model.local_encoder), (x,)),
        "policy": (_Policy(model), (fmap, h)),
    }
    with _in_eval_mode(model), torch.no_grad():
        feat, _ = model.local_encoder(x)
        cls = model.classifier.init_state(1, p.device, p.dtype)
        for t in range(model.max_steps):
            parts[f"classifier{t + 1}"] = (_Classifier(model, t), (feat, cls.clone()))
            _, cls = model.classifier(feat, cls, t, model.global_encoder.head)
    return parts


# ---------------------------------------------------------------------- counters
def _gru_cell_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """aten::gru_cell(input (n, I), hx (n, H), w_ih (3H, I), w_hh (3H, H), ...): 3H(I + H) MACs per row."""
    from fvcore.nn.jit_handles import get_shape

    n, i = get_shape(inputs[0])
    three_h = get_shape(inputs[2])[0]
    h = three_h // 3
    return int(n * 3 * h * (i + h))


# fvcore's per-operator keys that are multiply-adds (batch norm, pooling, upsampling are not)
_COUNTED = ("conv", "linear", "matmul", "addmm", "bmm", "einsum", "mm", "gru_cell")


def fvcore_macs(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    """Multiply-adds of conv / linear / matmul / GRU cell by fvcore (its "flops" are MACs)."""
    require_fvcore()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore's import uses the deprecated torch.jit.script
        from fvcore.nn import FlopCountAnalysis

    logging.getLogger("fvcore").setLevel(logging.ERROR)
    with _in_eval_mode(module), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore's torch.jit deprecation and tracer warnings
        fca = FlopCountAnalysis(module, inputs)
        fca.set_op_handle("aten::gru_cell", _gru_cell_handle)
        fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        return int(sum(v for k, v in fca.by_operator().items() if k in _COUNTED))


def torch_flops(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    """FLOPs (2 per multiply-add) by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with _in_eval_mode(module), torch.no_grad(), FlopCounterMode(display=False) as fc:
        module(*inputs)
    return int(fc.get_total_flops())


@dataclass
class StepFlops:
    macs: list[int]  # fvcore multiply-adds per step, steps 1 .. T
    torch_flops: list[int]  # torch.utils.flop_counter FLOPs per step (2 per MAC); [] unchecked
    static_macs: int | None = None  # the backbone alone on the full image (the static baseline)
    parts: dict[str, int] | None = None  # MACs of each part (encoders, policy, classifier steps)

    @property
    def flops(self) -> list[int]:
        return [2 * m for m in self.macs]

    @property
    def cumulative_macs(self) -> list[int]:
        out, s = [], 0
        for m in self.macs:
            s += m
            out.append(s)
        return out

    def max_rel_disagreement(self) -> float:
        return max(abs(2 * m - f) / max(f, 1) for m, f in zip(self.macs, self.torch_flops))

    def to_dict(self) -> dict[str, Any]:
        return {"macs": self.macs, "flops": self.flops, "torch_flops": self.torch_flops,
                "static_macs": self.static_macs, "parts": self.parts}


def count_step_flops(model: GFNet, *, static: bool = True, cross_check: bool = True) -> StepFlops:
    """Per-step MACs (fvcore) and FLOPs (torch) of ``model`` at its config's sizes.
    cross_check=False skips torch's count (``torch_flops`` is then empty): what a predictor
    needs, since torch.utils.flop_counter imports torch._dynamo, seconds of start-up."""
    part_macs, part_flops = {}, {}
    for name, (mod, inputs) in _parts(model).items():
        part_macs[name] = fvcore_macs(mod, inputs)
        if cross_check:
            part_flops[name] = torch_flops(mod, inputs)
    macs, tfl = [], []
    for t in range(1, model.max_steps + 1):
        names = (["global_encoder"] if t == 1 else ["policy", "local_encoder"]) + [f"classifier{t}"]
        macs.append(sum(part_macs[n] for n in names))
        if cross_check:
            tfl.append(sum(part_flops[n] for n in names))
    st = static_macs(model.global_encoder, model.cfg) if static else None
    return StepFlops(macs, tfl, st, part_macs)


def static_macs(backbone: nn.Module, cfg) -> int:
    """MACs per image of the static baseline: ``backbone`` and its head on the full
    cfg.image_size image, S x S or H x W (cfg: a ModelConfig)."""
    from .config import image_hw

    p = next(backbone.parameters())
    H, W = image_hw(cfg.image_size)
    x = torch.zeros(1, cfg.in_channels, H, W, dtype=p.dtype, device=p.device)
    return fvcore_macs(_Static(backbone), (x,))


def config_flops(cfg) -> StepFlops:
    """Per-step counts of the model a config (a Config) describes, with random weights (the
    counts do not depend on them); the global random state is left as it was."""
    from .models import build_model

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(cfg.model)
    return count_step_flops(model)


@dataclass
class FlopsSummary:
    """What ``gfnet flops`` reports: the per-step counts of a config's or a checkpoint's model and,
    for a model of the official release, the release's figures beside them."""

    cfg: Any  # the Config whose model was counted
    counts: StepFlops
    official: dict[str, Any] | None = None  # an imported official checkpoint's figures ("official")

    def to_dict(self) -> dict[str, Any]:
        d = self.counts.to_dict()
        if self.official:
            from .official.figures import official_step_macs

            d["official_cumulative_macs"] = official_step_macs(self.official)
        return d

    def official_text(self) -> str:
        """An imported checkpoint's own per-step figures beside ours; for a preset of an official
        model, what is known of it (the paper's approximate figures); "" otherwise."""
        from .official.figures import format_comparison, paper_note

        if self.official:
            return format_comparison(self.official, [float(m) for m in self.counts.macs])
        return paper_note(self.cfg.preset) if self.cfg.preset else ""


def flops_summary(cfg=None, *, checkpoint: str | Path | None = None) -> FlopsSummary:
    """Per-step counts of the model a config describes (random weights: the counts do not
    depend on them) or, given ``checkpoint`` (a file or run folder), of that checkpoint's model,
    with the release's own figures when it is an imported official one."""
    require_fvcore("gfnet flops")
    if checkpoint is not None:
        from .checkpoint import load_checkpoint_model

        model, cfg, ck = load_checkpoint_model(checkpoint)
        return FlopsSummary(cfg, count_step_flops(model), ck.get("official"))
    if cfg is None:
        raise ValueError("flops_summary needs a config or a checkpoint")
    return FlopsSummary(cfg, config_flops(cfg))


@functools.lru_cache(maxsize=8)
def _preset_flops(preset: str, overrides: tuple[str, ...]) -> StepFlops:
    from .config import build_config

    return config_flops(build_config(preset, overrides=list(overrides)))


def preset_flops(preset: str, overrides: Sequence[str] = ()) -> StepFlops:
    """Per-step counts of a preset (random weights; counts do not depend on them). Cached."""
    return _preset_flops(preset, tuple(overrides))


# ---------------------------------------------------------------------- adaptive FLOPs
def reached_from_exits(exit_counts: Sequence[int]) -> list[int]:
    out, left = [], int(sum(exit_counts))
    for c in exit_counts:
        out.append(left)
        left -= int(c)
    return out


def average_macs(exit_counts: Sequence[int], step_macs: Sequence[float]) -> float:
    """Average per-sample MACs of a run: sum_k reached_k * macs_k / samples."""
    if len(exit_counts) != len(step_macs):
        raise ValueError(f"{len(exit_counts)} exit counts for {len(step_macs)} steps")
    n = sum(exit_counts)
    if n == 0:
        return 0.0
    return float(sum(r * m for r, m in zip(reached_from_exits(exit_counts), step_macs)) / n)


def format_table(sf: StepFlops, title: str = "") -> str:
    lines = []
    if title:
        lines.append(title)
    lines.append(f"{'step':>6} {'part':<40} {'MACs (M)':>10} {'FLOPs (M)':>10} "
                 f"{'cum. MACs (M)':>14} {'torch FLOPs (M)':>16}")
    for k, (m, c, t) in enumerate(zip(sf.macs, sf.cumulative_macs, sf.torch_flops), start=1):
        part = "glance: global encoder + classifier" if k == 1 else "focus: policy + local enc. + classifier"
        lines.append(f"{k:>6} {part:<40} {m / 1e6:>10.2f} {2 * m / 1e6:>10.2f} {c / 1e6:>14.2f} {t / 1e6:>16.2f}")
    if sf.static_macs is not None:
        lines.append(f"{'static':>6} {'backbone on the full image':<40} {sf.static_macs / 1e6:>10.2f} "
                     f"{2 * sf.static_macs / 1e6:>10.2f}")
    lines.append("MACs: multiply-adds (fvcore; the unit the GFNet paper reports); FLOPs = 2 x MACs; "
                 f"torch.utils.flop_counter agrees within {100 * sf.max_rel_disagreement():.2f} %")
    return "\n".join(lines)


__all__ = ["FVCORE_MISSING", "FlopsSummary", "FvcoreMissingError", "StepFlops", "average_macs",
           "config_flops", "count_step_flops", "flops_summary", "format_table", "fvcore_available",
           "fvcore_macs", "preset_flops", "reached_from_exits", "require_fvcore", "torch_flops"]
