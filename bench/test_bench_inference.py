"""Throughput of the dynamic early-exit engine against running every step.

    .venv/bin/python -m pytest bench/test_bench_inference.py --benchmark-only

Workloads: the digits preset (batch 256) and mobilenet_v3_large-p96 (batch 64, 224 x 224),
random weights, eval mode, at three budgets whose thresholds are set on the batch's own
all-step confidences so that given fractions of the images exit at steps 1 / 2 / 3:
"early" 70/20/10 %, "mid" 50/30/20 %, "late" 20/30/50 %. Cases, in one group per workload:

    all_steps  the same model run for all T steps on every image (our crop kernel, batched)
    official   the official way: glance by F.interpolate, focus patches cut out one image at a
               time in a Python loop (a host sync per image), all T steps, exits simulated
               afterwards from the per-step confidences
    dynamic    gfnet.inference.dynamic_inference: each step computes only the active images

extra_info records the realised exit counts, the FLOPs-predicted speedup over all steps
(all-steps MACs / average MACs of the realised exits, per-step MACs from gfnet.flops) and the
realised one (median all_steps / median dynamic). Target: realised >= 90 % of predicted.
GPU rows run when a GPU is present. Without fvcore (the GPU image) every case still runs and
its ratios are reported; the predicted speedups and their targets say "fvcore not installed".
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from gfnet.exits import confidences, thresholds_for_fractions
from gfnet.config import build_config
from gfnet.flops import FVCORE_MISSING, average_macs, fvcore_available, preset_flops
from gfnet.inference import anytime_inference, dynamic_inference, simulate_exits
from gfnet.models import build_model

from bench.harness import MEDIANS, Target, add_targets, run_case

WORKLOADS = {"digits": 256, "mobilenet_v3_large-p96": 64}
BUDGETS = {"early": (0.7, 0.2, 0.1), "mid": (0.5, 0.3, 0.2), "late": (0.2, 0.3, 0.5)}
DEVICES = ["cpu", "cuda"]
ROUNDS = {"digits": 3, "mobilenet_v3_large-p96": 3}
torch.set_flush_denormal(True)  # random weights: keep denormals from skewing either side


def _predicted(preset: str, exit_counts) -> float | None:
    """All-steps MACs / average MACs of these exits (None without fvcore)."""
    if not fvcore_available():
        return None
    macs = preset_flops(preset).macs
    return sum(macs) / average_macs(exit_counts, macs)


for _dev in DEVICES:
    for _p in WORKLOADS:
        for _b, _fr in BUDGETS.items():
            _pred = _predicted(_p, [round(1000 * f) for f in _fr])
            _min = None if _pred is None else round(0.9 * _pred, 3)
            _what = FVCORE_MISSING if _pred is None else f"90% of the FLOPs-predicted speedup {_pred:.2f}x"
            add_targets(
                Target(f"gfnet_{_p}_{_dev}_{_b}", "dynamic", "all_steps", _min, _what),
                Target(f"gfnet_{_p}_{_dev}_{_b}", "dynamic", "official", _min,
                       "official way: all steps, per-image crops, exits simulated"
                       + ("" if _pred is not None else f"; {FVCORE_MISSING}")),
            )

_CACHE: dict = {}


def _settle_batch_norm(model, images: torch.Tensor) -> None:
    """Random weights leave the deep backbones' activations vanishing in eval mode (identity BN
    statistics): set each BN's statistics from one training-mode pass over a few images, so
    confidences differ from image to image and thresholds can split the batch."""
    for mod in model.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats()
            mod.momentum = None  # cumulative average: exactly this pass's statistics
    model.train()
    with torch.no_grad():
        model.rollout(images, policy="random", generator=torch.Generator(device=images.device).manual_seed(0))
    model.eval()


def _setup(preset: str, device: str):
    key = (preset, device)
    if key not in _CACHE:
        cfg = build_config(preset)
        torch.manual_seed(0)
        model = build_model(cfg.model).to(device)
        B, m = WORKLOADS[preset], cfg.model
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (B, m.in_channels, m.image_size, m.image_size), generator=g,
                               dtype=torch.uint8).to(device)
        _settle_batch_norm(model, images[:32])
        conf = confidences(anytime_inference(model, images).logits)
        _CACHE[key] = (model, images, conf)
    return _CACHE[key]


def official_forward(model, images: torch.Tensor):
    """All steps the way the official code runs them: float images normalised up front, glance
    by F.interpolate, focus patches cut one image at a time (int() of each location)."""
    cfg = model.cfg
    P, H, W = cfg.patch_size, images.shape[-2], images.shape[-1]
    mean = torch.tensor(cfg.mean, device=images.device)[:, None, None]
    std = torch.tensor(cfg.std, device=images.device)[:, None, None]
    x = (images.float() / 255 - mean) / std
    with torch.inference_mode():
        glance = F.interpolate(x, size=(P, P), mode=cfg.glance_mode, align_corners=cfg.glance_align_corners)
        feat, fmap = model.global_encoder(glance)
        cls = model.classifier.init_state(x.shape[0], x.device, x.dtype)
        logits, cls = model.classifier(feat, cls, 0, model.global_encoder.head)
        out = [logits]
        h = model.policy.init_hidden(x.shape[0], x.device)
        for t in range(1, model.max_steps):
            action, _v, h = model.policy(fmap, h)
            patches = []
            for i in range(x.shape[0]):
                top = int(torch.floor(action[i, 0].clamp(0, 1) * (H - P)))
                left = int(torch.floor(action[i, 1].clamp(0, 1) * (W - P)))
                patches.append(x[i, :, top:top + P, left:left + P])
            feat, fmap = model.local_encoder(torch.stack(patches))
            logits, cls = model.classifier(feat, cls, t, model.global_encoder.head)
            out.append(logits)
        return torch.stack(out)


@pytest.mark.parametrize("case", ["all_steps", "official", "dynamic"])  # baselines first
@pytest.mark.parametrize("budget", list(BUDGETS))
@pytest.mark.parametrize("preset", list(WORKLOADS))
@pytest.mark.parametrize("device", DEVICES)
def test_inference_throughput(benchmark, device, preset, budget, case):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    model, images, conf = _setup(preset, device)
    fractions = BUDGETS[budget]
    thr = thresholds_for_fractions(conf, fractions)
    B, T = images.shape[0], model.max_steps
    group = f"gfnet_{preset}_{device}_{budget}"
    fns = {
        "all_steps": lambda: anytime_inference(model, images),
        "official": lambda: simulate_exits(official_forward(model, images), thr),
        "dynamic": lambda: dynamic_inference(model, images, thr),
    }
    sync = torch.cuda.synchronize if device == "cuda" else None
    run_case(benchmark, group, case, fns[case], rounds=ROUNDS[preset], warmup_rounds=1, sync=sync)
    counts = dynamic_inference(model, images, thr).exit_counts
    predicted = _predicted(preset, counts)
    benchmark.extra_info.update(device=device, preset=preset, batch=B, steps=T,
                                target_exit_fractions=list(fractions), exit_counts=counts,
                                images_per_s=round(B / MEDIANS[group][case], 1),
                                predicted_speedup_vs_all_steps=FVCORE_MISSING if predicted is None
                                else round(predicted, 3))
    assert abs(counts[0] - round(fractions[0] * B)) <= max(2, B // 32), counts
    med = MEDIANS.get(group, {})
    if case == "dynamic" and "all_steps" in med:
        realised = med["all_steps"] / med["dynamic"]
        benchmark.extra_info.update(realised_speedup_vs_all_steps=round(realised, 3),
                                    realised_over_predicted=FVCORE_MISSING if predicted is None
                                    else round(realised / predicted, 3))
        if "official" in med:
            benchmark.extra_info["speedup_vs_official"] = round(med["official"] / med["dynamic"], 3)
