"""One step of early exit + batch compaction against the plain PyTorch way.

    .venv/bin/python -m pytest bench/test_bench_early_exit.py --benchmark-only

Workload (GFNet, ResNet-50 sizes): B = 256 active rows, K = 1000 classes; per-sample states
(B, 1024) GRU hidden, (B, 1024) policy hidden and a (B, 2048, 3, 3) feature map; thresholds
that let 10%, 50% and 90% of the rows exit. Both sides do the whole step: decide, record the
exiting rows' logits and step, read the survivor count, compact active and the three states.

    gfkernels: early_exit -> n = int(num_keep) -> active[keep[:n]] -> gather_rows([...])
    torch:     softmax, max, boolean mask, index_put of out_logits / exit_step, index each
               tensor with the mask

On a GPU (skipped without one) the same step runs on CUDA tensors, synchronised at the end of
each step; the speedup target there is 5x.
"""

from __future__ import annotations

import pytest
import torch

import gfkernels
from gfkernels import reference

from bench.harness import MEDIANS, Target, add_targets, run_case

B, K, HIDDEN, POLICY, FEAT = 256, 1000, 1024, 1024, (2048, 3, 3)
FRACTIONS = (0.1, 0.5, 0.9)
DEVICES = ["cpu", "cuda"]

for _device in DEVICES:
    for _f in FRACTIONS:
        add_targets(Target(f"early_exit_{_device}_{int(_f * 100)}pct", "gfkernels", "torch",
                           3.0 if _device == "cpu" else 5.0,
                           "softmax, max, mask, index each tensor, index_put"))


def make_step_data(device, fraction):
    g = torch.Generator().manual_seed(int(fraction * 100))
    logits = torch.randn(B, K, generator=g) * 4
    conf = reference.exit_confidence(logits).sort().values
    # a threshold between two confidences: exactly round(fraction * B) rows exit
    i = B - int(round(fraction * B))
    threshold = float(conf[i - 1] + conf[i]) / 2
    data = dict(
        logits=logits,
        active=torch.randperm(2 * B, generator=g)[:B],
        h=torch.randn(B, HIDDEN, generator=g),
        policy=torch.randn(B, POLICY, generator=g),
        fmap=torch.randn(B, *FEAT, generator=g),
        out_logits=torch.zeros(2 * B, K),
        exit_step=torch.full((2 * B,), -1, dtype=torch.int64),
    )
    data = {k: v.to(device) for k, v in data.items()}
    data["threshold"] = threshold
    return data


def step_gfkernels(d):
    keep, num_keep = gfkernels.early_exit(d["logits"], d["threshold"], d["active"],
                                          d["out_logits"], d["exit_step"], 1)
    n = int(num_keep)  # the one host sync of the step
    active = d["active"][keep[:n]]
    h, policy, fmap = gfkernels.gather_rows([d["h"], d["policy"], d["fmap"]], keep, n)
    return active, h, policy, fmap


def step_torch(d):
    conf = torch.softmax(d["logits"].float(), dim=1).max(dim=1).values
    exits = conf >= d["threshold"]
    rows = d["active"][exits]
    d["out_logits"][rows] = d["logits"][exits]
    d["exit_step"][rows] = 1
    stay = ~exits
    return d["active"][stay], d["h"][stay], d["policy"][stay], d["fmap"][stay]


STEPS = {"torch": step_torch, "gfkernels": step_gfkernels}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fraction", FRACTIONS)
@pytest.mark.parametrize("case", ["torch", "gfkernels"])  # the baseline first: ratios below
def test_early_exit_step(benchmark, device, fraction, case):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    group = f"early_exit_{device}_{int(fraction * 100)}pct"
    d = make_step_data(device, fraction)
    # both ways give the same step
    d_ref = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in d.items()}
    got, want = STEPS[case](d), step_torch(d_ref)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(d["out_logits"], d_ref["out_logits"], rtol=0, atol=0)
    torch.testing.assert_close(d["exit_step"], d_ref["exit_step"], rtol=0, atol=0)
    assert want[0].shape[0] == B - int(round(fraction * B))

    sync = torch.cuda.synchronize if device == "cuda" else None
    run_case(benchmark, group, case, lambda: STEPS[case](d), rounds=50, warmup_rounds=5,
             sync=sync)
    benchmark.extra_info.update(device=device, exit_fraction=fraction, B=B, K=K)
    medians = MEDIANS.get(group, {})
    if case == "gfkernels" and "torch" in medians:
        benchmark.extra_info["speedup_vs_torch"] = round(medians["torch"] / medians[case], 2)
