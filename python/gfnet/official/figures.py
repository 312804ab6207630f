"""The official release's own figures beside ours: per-step MACs and anytime accuracy.

An imported checkpoint keeps the release's ``flops`` (cumulative multiply-adds of 1 .. T
steps, as the release counted them) and ``anytime_classification`` (ImageNet top-1 % per
step). The release does not say in which unit it stored the multiply-adds; the values are read
as raw counts, millions or billions by their size (a GFNet step costs between ~10 M and ~5 G
multiply-adds, so the three ranges cannot be confused) and the unit used is printed.

The paper itself states the end points of each curve only approximately (read off its plots);
``PAPER_FIGURES`` keeps those for the presets they belong to.
"""

from __future__ import annotations

from itertools import accumulate
from typing import Any

# preset -> what the paper states about it (approximate: read off its plots)
PAPER_FIGURES: dict[str, str] = {
    "resnet50-p96": "GF-ResNet-50 curve from ~0.8 G MACs at 69.6 % to ~3.05 G at 76.7 %",
    "mobilenet_v3_large-p96": "GF-MobileNet-V3 curve from ~45 M MACs at 66.7 % (P = 96) to ~188 M at 75.5 % "
                              "(a P = 128 model)",
    "mobilenet_v3_large-p128": "GF-MobileNet-V3's top point ~188 M MACs at 75.5 %",
    "efficientnet_b2-p128": "GF-EfficientNet curve from ~0.23 G MACs at 75.9 % to ~0.76 G at 79.8 %",
}


def official_macs_unit(values: list[float]) -> tuple[float, str]:
    """(factor to multiply-adds, unit name) for the release's stored flops values."""
    top = max(abs(v) for v in values) if values else 0.0
    if top < 100:
        return 1e9, "G"
    if top < 1e6:
        return 1e6, "M"
    return 1.0, "multiply-adds"


def official_step_macs(official: dict[str, Any]) -> list[float] | None:
    """The release's cumulative per-step multiply-adds (1 .. T steps), in multiply-adds."""
    flops = official.get("flops")
    if not flops:
        return None
    factor, _ = official_macs_unit(flops)
    return [float(v) * factor for v in flops]


def comparison_rows(official: dict[str, Any], our_step_macs: list[float],
                    our_accuracy: list[float] | None = None) -> list[dict[str, Any]]:
    """Per step: our cumulative MACs (fvcore), the release's, our accuracy and the release's."""
    ours_cum = list(accumulate(map(float, our_step_macs)))
    theirs = official_step_macs(official) or []
    acc = official.get("anytime_classification") or []
    rows = []
    for t, c in enumerate(ours_cum):
        rows.append({"step": t + 1, "our_cum_macs": c,
                     "official_cum_macs": theirs[t] if t < len(theirs) else None,
                     "our_accuracy": our_accuracy[t] if our_accuracy and t < len(our_accuracy) else None,
                     "official_accuracy": acc[t] / 100.0 if t < len(acc) else None})
    return rows


def format_comparison(official: dict[str, Any], our_step_macs: list[float],
                      our_accuracy: list[float] | None = None) -> str:
    def fmt(v, scale=1e6, spec="{:>12.1f}"):
        return f"{'-':>12}" if v is None else spec.format(v / scale)

    rows = comparison_rows(official, our_step_macs, our_accuracy)
    unit = official_macs_unit(official["flops"])[1] if official.get("flops") else None
    lines = [f"official {official.get('paper_name', official.get('model_name'))} (P = {official.get('patch_size')}, "
             f"{official.get('format')} checkpoint) beside ours, per number of steps:",
             f"{'steps':>6} {'ours cum. MACs (M)':>19} {'official (M)':>12} {'ours/official':>14} "
             f"{'our acc.':>9} {'official acc.':>14}"]
    for r in rows:
        ratio = (f"{r['our_cum_macs'] / r['official_cum_macs']:>14.3f}" if r["official_cum_macs"] else f"{'-':>14}")
        oa = f"{r['our_accuracy']:>9.4f}" if r["our_accuracy"] is not None else f"{'-':>9}"
        fa = f"{r['official_accuracy']:>14.4f}" if r["official_accuracy"] is not None else f"{'-':>14}"
        lines.append(f"{r['step']:>6} {r['our_cum_macs'] / 1e6:>19.1f} {fmt(r['official_cum_macs'])} {ratio} {oa} {fa}")
    if unit:
        lines.append(f"official MACs: the checkpoint's flops, read as {unit} "
                     "(the release counted them its own way; ours: fvcore, conv/linear/GRU multiply-adds)")
    else:
        lines.append("official MACs: not in this checkpoint (train.py files carry none)")
    if official.get("anytime_classification"):
        lines.append("official accuracy: the checkpoint's anytime_classification (ImageNet val, top-1)")
    return "\n".join(lines)


def paper_note(preset: str) -> str:
    """What `gfnet flops` says about the official figures of a preset."""
    from .archs import arch_of_preset

    arch = arch_of_preset(preset)
    if arch is None:
        return ""
    lines = [f"official model: {arch.model_name} ({arch.paper_name}); its per-step MACs are stored in the "
             "released checkpoints, which are not bundled here: `gfnet import-official FILE --out X.pt` then "
             "`gfnet flops --checkpoint X.pt` shows them beside ours"]
    if preset in PAPER_FIGURES:
        lines.append(f"paper (approximate, read off its plots): {PAPER_FIGURES[preset]}")
    return "\n".join(lines)


__all__ = ["PAPER_FIGURES", "comparison_rows", "format_comparison", "official_macs_unit",
           "official_step_macs", "paper_note"]
