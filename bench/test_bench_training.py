"""Training-step throughput with gfkernels patch extraction vs the official per-sample loop.

One stage-1 training step (glance + random focus patches, forward, backward, SGD step) of the
`digits` preset and of `mobilenet_v3_large-p96`, on small CPU batches:

- ``gfkernels``: uint8 images; glance and focus patches each one batched
  ``gfkernels.crop_resize`` call, normalisation fused;
- ``loop``: what the official GFNet code does: images normalised to float beforehand
  (in its data loader), the glance by ``F.interpolate``, the focus patches by a Python loop
  slicing one patch per sample (a host sync per sample).

Each case records images/s and the fraction of the step spent in patch extraction
(``extra_info``); gfkernels' fraction must stay under 3 %.

    PYTHONPATH=python:. pytest bench/test_bench_training.py --benchmark-only \
        --benchmark-json bench/results/training_cpu.json
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO / "python", REPO):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from gfnet.config import build_config  # noqa: E402
from gfnet.models import build_model  # noqa: E402
from gfnet.train import set_trainable, stage_loss, trained_parts  # noqa: E402

from bench.harness import Target, add_targets, run_case  # noqa: E402

CASES = {
    # name: (preset, overrides, batch)
    "digits": ("digits", [], 32),
    "mobilenet_v3_large-p96": ("mobilenet_v3_large-p96", ["model.num_classes=100"], 8),
}


def _official_focus_loop(images: torch.Tensor, actions: torch.Tensor, patch: int) -> torch.Tensor:
    """The official per-sample patch loop (re-stated): one slice and host sync per sample."""
    h, w = images.shape[-2:]
    coords = torch.floor(actions.detach().clamp(0, 1) * torch.tensor([h - patch, w - patch]))
    out = []
    for i in range(images.shape[0]):
        top, left = int(coords[i, 0].item()), int(coords[i, 1].item())
        out.append(images[i:i + 1, :, top:top + patch, left:left + patch])
    return torch.cat(out, 0)


class _Timer:
    def __init__(self):
        self.seconds = 0.0

    def wrap(self, fn):
        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.seconds += time.perf_counter() - t

        return timed


def _setup(case: str, impl: str):
    preset, overrides, batch = CASES[case]
    cfg = build_config(preset, overrides=overrides + ["model.pretrained=false"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    parts = trained_parts(cfg, 1)
    set_trainable(model, parts)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, nesterov=True)
    m = cfg.model
    images = torch.randint(0, 256, (batch, m.in_channels, m.image_size, m.image_size), dtype=torch.uint8)
    labels = torch.randint(0, m.num_classes, (batch,))
    timer = _Timer()
    if impl == "loop":
        mean = torch.tensor(m.mean).view(1, -1, 1, 1)
        std = torch.tensor(m.std).view(1, -1, 1, 1)
        images = (images.float() / 255 - mean) / std  # the official loader hands over normalised floats

        def glance(imgs, batch_index=None):
            return F.interpolate(imgs, size=(m.patch_size, m.patch_size), mode=m.glance_mode,
                                 align_corners=m.glance_align_corners)

        def focus(imgs, actions, batch_index=None, boxes=None):  # positions from actions, as officially
            return _official_focus_loop(imgs, actions, m.patch_size)

        model.glance_input = timer.wrap(glance)
        model.focus_input = timer.wrap(focus)
    else:
        model.glance_input = timer.wrap(model.glance_input)
        model.focus_boxes = timer.wrap(model.focus_boxes)  # made once per step, beside the crop
        model.focus_input = timer.wrap(model.focus_input)

    def step():
        outs = model.rollout(images, policy="random")
        loss = stage_loss(outs, labels, cfg.optim.head_loss_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, timer, batch


@pytest.mark.parametrize("impl", ["gfkernels", "loop"])
@pytest.mark.parametrize("case", list(CASES))
def test_training_step(benchmark, case, impl):
    torch.set_num_threads(1)
    step, timer, batch = _setup(case, impl)
    step()  # warm-up (allocator, first-call overheads)
    timer.seconds = 0.0
    rounds = 5 if case == "digits" else 3
    t0 = time.perf_counter()
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=0)
    wall = time.perf_counter() - t0
    fraction = timer.seconds / wall
    benchmark.extra_info.update({
        "images_per_s": round(batch * rounds / wall, 2), "batch": batch,
        "patch_extraction_s_per_step": round(timer.seconds / rounds, 6),
        "patch_fraction": round(fraction, 5), "threads": torch.get_num_threads(),
    })
    print(f"\n{case} [{impl}]: {batch * rounds / wall:.1f} img/s, patch extraction "
          f"{1e3 * timer.seconds / rounds:.2f} ms/step = {100 * fraction:.2f}% of the step")
    if impl == "gfkernels":
        assert fraction < 0.03, f"patch extraction is {100 * fraction:.1f}% of a training step"
    assert math.isfinite(wall)


# ---------------------------------------------------------------------- memory layout and precision
# (issue 28) One stage-1 step in each training format the config offers on a CPU: run.train_layout
# (contiguous | channels_last) and run.amp (off | bf16). 2 threads, the machine's cores.
FORMAT_CASES = {"mobilenet_v3_large-p96": ("mobilenet_v3_large-p96", ["model.num_classes=100"], 32),
                "digits": ("digits", [], 32)}
TRAIN_FORMATS = {"fp32": (torch.contiguous_format, None), "channels_last": (torch.channels_last, None),
                 "bf16": (torch.contiguous_format, torch.bfloat16),
                 "bf16_channels_last": (torch.channels_last, torch.bfloat16)}
for _case in FORMAT_CASES:
    add_targets(*(Target(f"training_format_{_case}_cpu", _f, "fp32", None, "reported: the training step's "
                         "speed in this format against contiguous fp32") for _f in list(TRAIN_FORMATS)[1:]))


def _format_setup(case: str, layout, dtype):
    preset, overrides, batch = FORMAT_CASES[case]
    cfg = build_config(preset, overrides=overrides + ["model.pretrained=false"])
    torch.manual_seed(0)
    model = build_model(cfg.model).to(memory_format=layout)
    set_trainable(model, trained_parts(cfg, 1))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9,
                          nesterov=True)
    m = cfg.model
    images = torch.randint(0, 256, (batch, m.in_channels, m.image_size, m.image_size), dtype=torch.uint8)
    labels = torch.randint(0, m.num_classes, (batch,))

    def step():
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            outs = model.rollout(images, policy="random")
            loss = stage_loss(outs, labels, cfg.optim.head_loss_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, batch


@pytest.mark.parametrize("fmt", list(TRAIN_FORMATS))
@pytest.mark.parametrize("case", list(FORMAT_CASES))
def test_training_step_format(benchmark, case, fmt):
    from gfnet.precision import cpu_has_native_bf16

    layout, dtype = TRAIN_FORMATS[fmt]
    if dtype is not None and not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16 (AVX-512 BF16 or AMX)")
    torch.set_num_threads(2)
    step, batch = _format_setup(case, layout, dtype)
    step()  # warm-up
    run_case(benchmark, f"training_format_{case}_cpu", fmt, step, rounds=3, warmup_rounds=0)
    benchmark.extra_info["images_per_s"] = round(batch / benchmark.stats.stats.median, 2)
