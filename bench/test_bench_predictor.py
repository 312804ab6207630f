"""What the predictor (gfnet.load) costs over calling the dynamic engine by hand.

    .venv/bin/python -m pytest bench/test_bench_predictor.py --benchmark-only

Workload: the digits preset (random weights, batch norm settled as in test_bench_inference),
64 decoded 128 x 128 grayscale images, exits at a mid budget (thresholds set on the batch's own
confidences so that 50 / 30 / 20 % exit at steps 1 / 2 / 3). Cases, in one group per device:

    engine             gfnet.inference.dynamic_inference on the batch already stacked (the engine
                       alone: the strictest baseline)
    engine_by_hand     what a user writes by hand: np.stack the decoded images, torch.from_numpy,
                       the engine, read the classes back
    predictor_numpy    predictor(list of 64 numpy (H, W) uint8 arrays, threshold=...)
    predictor_tensors  predictor(list of 64 (1, H, W) uint8 tensors, threshold=...)

Target: the predictor's overhead at most 10 % over the engine alone, i.e. engine time /
predictor time >= 1 / 1.1 (0.909x) for both input kinds. images_per_s is in extra_info.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gfnet.exits import confidences, thresholds_for_fractions
from gfnet.config import build_config
from gfnet.inference import anytime_inference, dynamic_inference
from gfnet.models import build_model
from gfnet.predictor import Predictor

from bench.harness import MEDIANS, Target, add_targets, run_case
from bench.test_bench_inference import _settle_batch_norm

BATCH = 64
FRACTIONS = (0.5, 0.3, 0.2)
DEVICES = ["cpu", "cuda"]
MAX_OVERHEAD = 0.10
torch.set_flush_denormal(True)

for _dev in DEVICES:
    for _case in ("predictor_numpy", "predictor_tensors"):
        add_targets(Target(f"predictor_digits_{_dev}_b{BATCH}", _case, "engine", round(1 / (1 + MAX_OVERHEAD), 3),
                           f"overhead <= {100 * MAX_OVERHEAD:g} % over the engine alone"))

_CACHE: dict = {}


def _setup(device: str):
    if device not in _CACHE:
        cfg = build_config("digits")
        torch.manual_seed(0)
        model = build_model(cfg.model).to(device)
        g = torch.Generator().manual_seed(0)
        batch = torch.randint(0, 256, (BATCH, 1, 128, 128), generator=g, dtype=torch.uint8)
        _settle_batch_norm(model, batch[:32].to(device))
        thr = thresholds_for_fractions(confidences(anytime_inference(model, batch.to(device)).logits), FRACTIONS)
        predictor = Predictor(model, cfg)
        predictor.step_macs  # noqa: B018 - counted once, before any timing
        arrays = [x[0].numpy() for x in batch]  # decoded images, as PIL or an image library gives them
        tensors = list(batch)
        exit_counts = dynamic_inference(model, batch.to(device), thr).exit_counts  # the same for every case
        _CACHE[device] = (predictor, batch, arrays, tensors, thr, exit_counts)
    return _CACHE[device]


@pytest.mark.parametrize("case", ["engine", "engine_by_hand", "predictor_numpy", "predictor_tensors"])
@pytest.mark.parametrize("device", DEVICES)
def test_predictor_overhead(benchmark, device, case):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    predictor, batch, arrays, tensors, thr, exit_counts = _setup(device)
    model = predictor.model
    on_device = batch.to(device)

    def by_hand():
        x = torch.from_numpy(np.stack(arrays))[:, None].to(device)
        return dynamic_inference(model, x, thr).prediction.tolist()

    fns = {
        "engine": lambda: dynamic_inference(model, on_device, thr),
        "engine_by_hand": by_hand,
        "predictor_numpy": lambda: predictor(arrays, threshold=thr, batch_size=BATCH),
        "predictor_tensors": lambda: predictor(tensors, threshold=thr, batch_size=BATCH),
    }
    group = f"predictor_digits_{device}_b{BATCH}"
    sync = torch.cuda.synchronize if device == "cuda" else None
    run_case(benchmark, group, case, fns[case], rounds=15, warmup_rounds=2, sync=sync)
    med = MEDIANS[group]
    benchmark.extra_info.update(device=device, batch=BATCH, images_per_s=round(BATCH / med[case], 1),
                                exit_counts=exit_counts)
    if case.startswith("predictor") and "engine" in med:
        benchmark.extra_info["overhead_vs_engine"] = round(med[case] / med["engine"] - 1, 4)
    if case.startswith("predictor") and "engine_by_hand" in med:
        benchmark.extra_info["overhead_vs_engine_by_hand"] = round(med[case] / med["engine_by_hand"] - 1, 4)
