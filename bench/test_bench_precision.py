"""Inference in the CPU's fastest format: channels_last and bf16 against the official way.

    .venv/bin/python -m pytest bench/test_bench_precision.py --benchmark-only

Random weights (batch norm settled on the images, as in test_bench_inference.py), eval mode,
uint8 images at the preset's size. Cases, one group per preset:

    official          the official code's way: contiguous float32, glance by F.interpolate,
                      patches cut one image at a time, all T steps (exits would be simulated
                      afterwards, so this is also its time with early exit)
    all_steps_fp32    our engine, all T steps, as it ran before (contiguous float32)
    all_steps_cl      the same in channels_last
    all_steps_folded  channels_last with batch norm folded into the convolutions (and for
                      ResNet-50 the weights packed once, gfnet.models.prepack): fp32 as
                      gfnet.load, gfnet eval and the report run it
    dynamic_fp32      the dynamic engine in that format, with half the images exiting at the
                      glance and 30 / 20 % at the next steps ("mid", thresholds set on the fp32
                      confidences)
    all_steps_bf16    the same as all_steps_folded under bf16 autocast
    dynamic_bf16      the dynamic engine in bf16 (channels_last, folded), the same exits

Targets (issue 28): all steps in fp32 (folded, channels_last) at least 1.4x the official way for mobilenet_v3_large-p96
and 1.15x for resnet50-p96; bf16 at least 2x, and with early exit at least 3x. The digits preset
is reported without targets. The logits' agreement is checked by tests/gfnet/test_precision.py,
the demo's accuracy in bf16 by `gfnet eval --precision bf16` (bench/RESULTS.md).
"""

from __future__ import annotations

import copy

import pytest
import torch
from gfnet.config import build_config
from gfnet.exits import confidences, thresholds_for_fractions
from gfnet.inference import anytime_inference, dynamic_inference
from gfnet.models import build_model
from gfnet.precision import FP32, InferenceFormat, cpu_has_native_bf16

from bench.harness import Target, add_targets, run_case
from bench.test_bench_inference import BUDGETS, _settle_batch_norm, official_forward

# preset -> (batch, min speedup over official of all steps in fp32 channels_last, or None)
WORKLOADS = {"mobilenet_v3_large-p96": (64, 1.4), "resnet50-p96": (16, 1.15), "digits": (256, None)}
FAST_FP32, FAST_BF16 = InferenceFormat("fp32", True, True), InferenceFormat("bf16", True, True)
FORMATS = {"all_steps_fp32": FP32, "all_steps_cl": InferenceFormat("fp32", True),
           "all_steps_folded": FAST_FP32, "dynamic_fp32": FAST_FP32, "all_steps_bf16": FAST_BF16,
           "dynamic_bf16": FAST_BF16}
CASES = ["official", *FORMATS]
BF16_SPEEDUP, EXIT_SPEEDUP = 2.0, 3.0
torch.set_flush_denormal(True)

for _p, (_b, _cl) in WORKLOADS.items():
    _g = f"precision_{_p}_cpu"
    _no = None if _p != "digits" else "reported only"
    add_targets(
        Target(_g, "all_steps_fp32", "official", None, "our engine as it ran before: contiguous float32"),
        Target(_g, "all_steps_cl", "official", None, "channels_last alone"),
        Target(_g, "all_steps_folded", "official", _cl, _no or "all steps, fp32 (channels_last, BN folded)"),
        Target(_g, "dynamic_fp32", "official", None, "early exit (mid), fp32"),
        Target(_g, "all_steps_bf16", "official", None if _no else BF16_SPEEDUP, _no or "all steps, bf16"),
        Target(_g, "dynamic_bf16", "official", None if _no else EXIT_SPEEDUP, _no or "early exit (mid), bf16"),
    )

_CACHE: dict = {}


def _setup(preset: str, batch: int):
    if preset not in _CACHE:
        cfg = build_config(preset)
        torch.manual_seed(0)
        model = build_model(cfg.model)
        m = cfg.model
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (batch, m.in_channels, m.image_size, m.image_size), generator=g,
                               dtype=torch.uint8)
        _settle_batch_norm(model, images[:16])
        conf = confidences(anytime_inference(model, images).logits)
        thr = thresholds_for_fractions(conf, BUDGETS[model.max_steps]["mid"])
        folded = copy.deepcopy(model).set_inference_format(FAST_FP32)  # folding is for good: a copy
        _CACHE[preset] = (model, folded, images, thr)
    return _CACHE[preset]


@pytest.mark.parametrize("preset,case", [pytest.param(p, c, id=f"{p}-{c}") for p in WORKLOADS for c in CASES])
def test_precision_throughput(benchmark, preset, case):
    if case.endswith("bf16") and not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16 (AVX-512 BF16 or AMX)")
    batch, _ = WORKLOADS[preset]
    plain, folded, images, thr = _setup(preset, batch)
    if case == "official":
        model = plain.set_inference_format(FP32)
        fn = lambda: official_forward(model, images)  # noqa: E731
    else:
        fmt = FORMATS[case]
        model = (folded if fmt.fold_batch_norm else plain).set_inference_format(fmt)
        if case.startswith("dynamic"):
            fn = lambda: dynamic_inference(model, images, thr)  # noqa: E731
        else:
            fn = lambda: anytime_inference(model, images)  # noqa: E731
    benchmark.extra_info["format"] = "official" if case == "official" else FORMATS[case].describe()
    run_case(benchmark, f"precision_{preset}_cpu", case, fn, rounds=3, warmup_rounds=1)
