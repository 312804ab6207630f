"""The main job end to end: what ``gfnet demo`` (and ``make demo``) runs, callable from Python.

    report = run_demo(build_config("digits"), "runs/demo", log=print)

1. train the static baseline (the backbone on the full image) -> OUT/baseline.pt;
2. train GFNet through its three stages, both encoders starting from that baseline (the paper
   starts them from ImageNet-trained weights: the network a user already has);
3. calibrate exit thresholds on held-out images (``data.calibration``: the validation split
   when it is not the test split, as for digits) and evaluate every budget on the test
   split -> OUT/eval/;
4. the report: throughput of the dynamic engine against all steps and the baseline, pictures
   -> OUT/report.md, OUT/report.json, OUT/report/.
Every step resumes: finished stages, a finished baseline and stored thresholds are reused.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import Config
from .device import pick_device
from .evaluate import evaluate_run

STEPS = 4


def run_demo(cfg: Config, out: str | Path, *, images: int = 8, passes: int = 3,
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or finish) the four steps into ``out``; returns the report (``report.json``).

    images: test images drawn with their glance and patches; passes: timed passes per engine;
    log: receives a heading per step and the results of each.
    """
    from .report import build_report
    from .train import train
    from .train.baseline import BASELINE_FILE, train_baseline

    say = log or (lambda _msg: None)
    out = Path(out)
    baseline = out / BASELINE_FILE

    def step(k: int, what: str) -> None:
        say(f"\n== gfnet demo {k}/{STEPS}: {what} ==")

    step(1, f"train the static baseline ({cfg.model.backbone} on the full image) -> {baseline}")
    ck = train_baseline(cfg.copy(), out, resume=True)  # resume: a finished baseline is reused
    say(f"static baseline: test accuracy {ck['test_accuracy']:.4f}, {ck['macs'] / 1e6:.2f} M MACs per image")
    gf_cfg = cfg.copy()
    if not (gf_cfg.model.init_from or gf_cfg.model.pretrained):
        gf_cfg.model.init_from = str(baseline)
    step(2, f"train GFNet ({cfg.preset}), encoders from {gf_cfg.model.init_from or 'pretrained weights'}: "
            f"warm-up, policy (PPO), fine-tune -> {out}")
    train(gf_cfg, out, [1, 2, 3], resume=True)  # finished stages are skipped
    # simulate: every budget's exits from one all-step pass (the same numbers as the dynamic
    # engine, which the tests check); the report runs the dynamic engine itself for throughput.
    step(3, "calibrate thresholds on held-out images (never the test split), evaluate every budget on the test split")
    evaluate_run(out, baseline=baseline, simulate=True, device=cfg.run.device, log=log)
    step(4, "report: throughput of the dynamic engine vs all steps vs the baseline, pictures")
    return build_report(out, device=pick_device(cfg.run.device), num_images=images, passes=passes)


__all__ = ["run_demo"]
