"""Pictures: accuracy against average FLOPs, and what the model looked at (matplotlib, Agg)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy_vs_flops(path: str | Path, budget_macs: Sequence[float], budget_acc: Sequence[float], *,
                           step_macs_cum: Sequence[float] | None = None,
                           step_acc: Sequence[float] | None = None,
                           random_step_acc: Sequence[float] | None = None,
                           baseline: tuple[float, float] | None = None,
                           highlight: tuple[float, float, str] | None = None,
                           macs_limit: tuple[float, str] | None = None,
                           title: str = "GFNet: accuracy vs average MACs") -> Path:
    """Budgeted accuracy against average MACs (line), each step's anytime accuracy at its
    cumulative MACs (squares), the same with uniformly random focus locations if given
    (crosses), and a static baseline (MACs, accuracy) if given (star). highlight: one (MACs,
    accuracy, label) point circled (an operating point); macs_limit: (MACs, label) drawn as a
    vertical dashed line. MACs in millions; FLOPs = 2 x MACs. The PNG's "Description" text
    lists the curves drawn (their legend labels)."""
    plt = _plt()
    path = path if hasattr(path, "write") else Path(path)
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=110)
    order = sorted(range(len(budget_macs)), key=lambda i: budget_macs[i])
    ax.plot([budget_macs[i] / 1e6 for i in order], [100 * budget_acc[i] for i in order], "o-",
            ms=3, label="dynamic (budgets)")
    if step_macs_cum is not None and step_acc is not None:
        ax.plot([m / 1e6 for m in step_macs_cum], [100 * a for a in step_acc], "s--", ms=5,
                label="anytime, step k (all samples)")
        for k, (m, a) in enumerate(zip(step_macs_cum, step_acc), start=1):
            ax.annotate(f"t={k}", (m / 1e6, 100 * a), textcoords="offset points", xytext=(4, -10), fontsize=8)
    if step_macs_cum is not None and random_step_acc is not None:
        ax.plot([m / 1e6 for m in step_macs_cum], [100 * a for a in random_step_acc], "x:", ms=7,
                color="tab:gray", label="anytime, random focus locations")
    if baseline is not None:
        ax.plot([baseline[0] / 1e6], [100 * baseline[1]], "*", ms=12, label="static baseline")
        ax.axhline(100 * baseline[1] - 1, color="gray", lw=0.8, ls=":", label="baseline - 1 point")
    if macs_limit is not None:
        ax.axvline(macs_limit[0] / 1e6, color="gray", lw=0.8, ls="--", label=macs_limit[1])
    if highlight is not None:
        ax.plot([highlight[0] / 1e6], [100 * highlight[1]], "o", ms=11, mfc="none", mec="tab:red", mew=2,
                label=highlight[2])
    ax.set_xlabel("average MACs per image (M)   [FLOPs = 2 x MACs]")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    labels = ax.get_legend_handles_labels()[1]
    _save(fig, path, metadata={"Title": title, "Description": "curves: " + "; ".join(labels)})
    return path


def _save(fig, path, **kwargs) -> None:
    """Saves and closes ``fig`` as a PNG: into ``path`` (its folder created), or into a binary
    file object (what ``gfnet.files.OutputFolder`` writes atomically)."""
    try:
        if hasattr(path, "write"):
            fig.savefig(path, format="png", **kwargs)
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, **kwargs)
    finally:
        _plt().close(fig)


def plot_training_curves(path: str | Path, curves, *, title: str = "Training curves") -> Path:
    """Per epoch, each stage in turn (train/curves.StageCurve, baseline first): the training loss
    (left) and the validation accuracy of every step (right; the baseline's one line is its
    whole-image accuracy). Stages follow each other along the x axis, separated by dotted lines
    and named above the plot, so a user sees where each stage started, ended and converged."""
    plt = _plt()
    path = Path(path)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    start = 0
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    labelled_steps: set[int] = set()
    for curve in curves:
        if not curve.epochs:
            continue
        x = [start + e for e in curve.epochs]
        ax_loss.plot(x, curve.loss, "o-", ms=3, color="black" if curve.stage == 0 else "tab:blue")
        steps = len(curve.val_accuracy[0])
        for k in range(steps):
            acc = [100 * row[k] for row in curve.val_accuracy]
            if curve.stage == 0:
                ax_acc.plot(x, acc, "*-", ms=5, color="black", label="baseline (whole image)")
                continue
            label = None if k in labelled_steps else ("step 1 (glance)" if k == 0 else f"step {k + 1}")
            labelled_steps.add(k)
            ax_acc.plot(x, acc, "o-", ms=3, color=colors[k % len(colors)], label=label)
        for ax in (ax_loss, ax_acc):
            ax.axvline(start + 0.5, color="gray", lw=0.8, ls=":")
            ax.text(start + 0.5 + (x[-1] - start) / 2, 1.01, curve.label.split(" (")[0],
                    transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=7)
        start = x[-1]
    ax_loss.set_xlabel("epoch (stages in turn)")
    ax_loss.set_ylabel("training loss")
    ax_acc.set_xlabel("epoch (stages in turn)")
    ax_acc.set_ylabel("validation accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    if ax_acc.get_legend_handles_labels()[1]:
        ax_acc.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    stages = "; ".join(c.label for c in curves if c.epochs)
    _save(fig, path, metadata={"Title": title, "Description": "stages: " + stages})
    return path


def _to_display(img: torch.Tensor, mean=None, std=None):
    """(C, H, W) uint8 or float -> numpy (H, W[, 3]) in [0, 1] for imshow."""
    x = img.detach().float().cpu()
    if img.dtype == torch.uint8:
        x = x / 255.0
    elif mean is not None and std is not None and float(x.min()) < 0:
        x = x * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    elif float(x.max()) > 1.0:
        x = x / 255.0
    x = x.clamp(0, 1)
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def patch_picture(path: str | Path, image: torch.Tensor, boxes: torch.Tensor, patch_size: int, *,
                  exit_step: int | None = None, label: str = "", glance_mode: str = "bicubic",
                  glance_align_corners: bool = True) -> Path:
    """The image with the focus boxes drawn in order, then the glance and each focus patch.
    boxes: (T, 4) (x1, y1, x2, y2); rows of NaN (steps not taken) are skipped."""
    import matplotlib.patches as mpatches
    import torch.nn.functional as F

    plt = _plt()
    path = path if hasattr(path, "write") else Path(path)
    taken = [t for t in range(boxes.shape[0]) if not math.isnan(float(boxes[t, 0]))]
    if exit_step is not None:
        taken = [t for t in taken if t < exit_step]
    ncol = 1 + len(taken)
    fig, axes = plt.subplots(1, ncol, figsize=(2.6 * ncol, 2.9), dpi=100, squeeze=False)
    axes = axes[0]
    cmap = "gray" if image.shape[0] == 1 else None
    axes[0].imshow(_to_display(image), cmap=cmap, vmin=0, vmax=1)
    colors = ["tab:red", "tab:orange", "tab:green", "tab:blue", "tab:purple", "tab:brown"]
    for i, t in enumerate(taken[1:] if taken and taken[0] == 0 else taken):
        x1, y1, x2, y2 = [float(v) for v in boxes[t]]
        c = colors[i % len(colors)]
        axes[0].add_patch(mpatches.Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, lw=2, ec=c))
        axes[0].text(x1 + 1, y1 + 8, str(t + 1), color=c, fontsize=9, weight="bold")
    axes[0].set_title(label or "image", fontsize=9)
    src = image.detach().float().cpu()[None]
    for j, t in enumerate(taken, start=1):
        if t == 0:
            kw = {"align_corners": glance_align_corners} if glance_mode != "nearest" else {}
            p = F.interpolate(src, size=(patch_size, patch_size), mode=glance_mode, **kw)[0]
            title = "step 1: glance"
        else:
            x1, y1, x2, y2 = [int(float(v)) for v in boxes[t]]
            p = src[0, :, y1:y2, x1:x2]
            title = f"step {t + 1}: focus"
        p = p.clamp(0, 255).to(torch.uint8) if image.dtype == torch.uint8 else p
        axes[j].imshow(_to_display(p), cmap=cmap, vmin=0, vmax=1)
        axes[j].set_title(title, fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    _save(fig, path)
    return path


def prediction_picture_name(index: int, name: str) -> str:
    """The file name of the picture of image ``index`` (``name``: its file or place in a call)."""
    return f"{index:03d}_{Path(name).stem}.png"


def prediction_picture(out_dir, index: int, name: str, image: torch.Tensor, boxes: torch.Tensor,
                       model_cfg, *, exit_step: int, label: str):
    """The picture of image ``index`` (``name``: its file or place in a call) of a prediction:
    ``out_dir/<index>_<name's stem>.png`` (or into ``out_dir`` itself when it is a binary file
    object), drawn by ``patch_picture`` with the model's glance."""
    m = model_cfg
    path = out_dir if hasattr(out_dir, "write") else Path(out_dir) / prediction_picture_name(index, name)
    return patch_picture(path, image, boxes, m.patch_size, exit_step=exit_step, label=label,
                         glance_mode=m.glance_mode, glance_align_corners=m.glance_align_corners)


def predict_pictures(model, images, names, thresholds, out_dir) -> list[dict]:
    """Early-exit inference of ``images`` (B, C, H, W) and one picture per image of its glance
    and focus patches in ``out_dir``: a row per image (prediction, confidence, exit step, boxes,
    picture path)."""
    from .inference import dynamic_inference

    m = model.cfg
    r = dynamic_inference(model, images, thresholds)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    conf, pred, boxes = r.confidence.cpu(), r.prediction.cpu(), r.boxes.cpu()
    rows = []
    for i, name in enumerate(names):
        es = int(r.exit_step[i])
        pic = prediction_picture(out, i, name, images[i].cpu(), boxes[i], m, exit_step=es,
                                 label=f"class {int(pred[i])} ({float(conf[i]):.2f}), exit at step {es}")
        rows.append({"image": str(name), "prediction": int(pred[i]), "confidence": float(conf[i]),
                     "exit_step": es, "boxes": boxes[i, :es].tolist(), "picture": str(pic)})
    return rows


__all__ = ["patch_picture", "plot_accuracy_vs_flops", "plot_training_curves", "predict_pictures",
           "prediction_picture", "prediction_picture_name"]
