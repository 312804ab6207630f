"""Where the GPU time of each benchmarked call goes: host-bound or device-bound, and which kernels.

    python -m bench.gpu_profile [--json FILE] [--only NAME ...]      # on a GPU machine
    TRITON_INTERPRET=1 python -m bench.gpu_profile --device cpu --only crop   # a dry run

For every case (the GPU benchmarks' workloads: the focus crop and the glance of
bench/test_bench_crop_resize_gpu.py, the early-exit step of bench/test_bench_early_exit.py, the
dynamic engine and all steps of bench/test_bench_inference.py) three figures per call:

    host_us     the host's time to issue the call (REPS calls without a sync, divided by REPS;
                a call that syncs itself, like the early-exit step, waits for the device here)
    wall_us     CUDA events around REPS back-to-back calls, divided by REPS: what the benchmarks time
    device_us   the kernels' own time (torch.profiler, the sum of their durations per call) and
    kernels     how many kernels (and copies) one call launches

wall ~ host > device says the call is host-bound (launches and Python, not the kernels, set its
speed); wall ~ device says the kernels are. The slowest kernels of each case follow the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Callable

import torch

REPS = 20


def _device_time_us(evt) -> float:
    for name in ("self_device_time_total", "self_cuda_time_total"):
        value = getattr(evt, name, None)
        if value is not None:
            return float(value)
    return 0.0


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(fn: Callable[[], object], device: str = "cuda", reps: int = REPS) -> dict:
    for _ in range(3):  # warm-up: compiles, caches, allocator
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    host = (time.perf_counter() - t0) / reps
    _sync(device)

    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        wall = start.elapsed_time(end) / 1e3 / reps
    else:
        wall = host

    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(reps):
            fn()
        _sync(device)
    device_us, kernels, top = 0.0, 0, []
    for evt in prof.key_averages():
        # only the kernels' (and copies') own rows: a CPU op's row repeats the time of the
        # kernels it launched
        if evt.device_type == torch.autograd.DeviceType.CUDA:
            us = _device_time_us(evt)
            kernels += evt.count
            top.append((us / reps, evt.count / reps, evt.key[:90]))
            device_us += us
    top.sort(reverse=True)
    return dict(host_us=host * 1e6, wall_us=wall * 1e6, device_us=device_us / reps,
                kernels=kernels / reps, top=top[:6])


def cases(device: str = "cuda") -> dict[str, Callable[[], object]]:
    import gfkernels
    from gfkernels import reference
    from gfnet.exits import thresholds_for_fractions
    from gfnet.inference import anytime_inference, dynamic_inference

    from bench import test_bench_early_exit as ee
    from bench import test_bench_inference as inf

    out: dict[str, Callable[[], object]] = {}
    g = torch.Generator().manual_seed(0)
    B, C, S, P = 256, 3, 224, 96
    images = torch.rand(B, C, S, S, generator=g).to(device)
    boxes = reference.focus_boxes(torch.rand(B, 2, generator=g), S, P).to(device)
    src = torch.empty(B * C * P * P, device=device)
    dst = torch.empty_like(src)
    whole = torch.tensor([[0.0, 0.0, S, S]], device=device).expand(B, 4).contiguous()
    out["copy_same_bytes"] = lambda: dst.copy_(src)
    backends = ("cuda", "triton") if device == "cuda" else ("cpp", "triton")
    for backend in backends:
        out[f"focus_crop_{backend}"] = (
            lambda b=backend: gfkernels.crop_resize(images, boxes, P, backend=b))
        out[f"glance_bicubic_{backend}"] = (
            lambda b=backend: gfkernels.crop_resize(images, whole, P, mode="bicubic", align_corners=True,
                                                    backend=b))
    out["glance_F.interpolate"] = lambda: torch.nn.functional.interpolate(
        images, size=(P, P), mode="bicubic", align_corners=True)

    step = ee.make_step_data(device, 0.5)
    out["early_exit_step_gfkernels"] = lambda: ee.step_gfkernels(step)
    out["early_exit_step_torch"] = lambda: ee.step_torch(step)
    logits, active = step["logits"], step["active"]
    for backend in backends:
        out[f"early_exit_op_{backend}"] = (lambda b=backend: gfkernels.early_exit(
            logits, step["threshold"], active, step["out_logits"], step["exit_step"], 1, backend=b))
    keep = torch.randperm(B, device=device)
    tensors = [step["h"], step["policy"], step["fmap"]]
    out["gather_rows_op"] = lambda: gfkernels.gather_rows(tensors, keep, B // 2)

    for preset, batch, dtype in inf.WORKLOADS[device]:
        if dtype is None and device == "cuda":
            continue
        model, imgs, conf = inf._setup(preset, device, batch, dtype)
        thr = thresholds_for_fractions(conf, inf.BUDGETS[model.max_steps]["mid"])
        name = f"{preset}_b{batch}_{inf.DTYPE_NAMES.get(dtype, 'fp32')}_mid"

        def run(fn, dtype=dtype):
            with inf._autocast(device, dtype):
                return fn()

        out[f"{name}_all_steps"] = lambda m=model, x=imgs, r=run: r(lambda: anytime_inference(m, x))
        out[f"{name}_dynamic"] = lambda m=model, x=imgs, t=thr, r=run: r(lambda: dynamic_inference(m, x, t))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the figures here too")
    parser.add_argument("--only", nargs="*", help="cases whose name contains one of these")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="cpu: a dry run of the script (Triton needs TRITON_INTERPRET=1)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_profile: no CUDA GPU", file=sys.stderr)
        return 1
    results = {}
    card = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (dry run)"
    print(f"{card}, torch {torch.__version__}, {REPS} calls per figure\n")
    print("| case | host us | wall us | device us | kernels | bound by |")
    print("|---|---:|---:|---:|---:|---|")
    for name, fn in cases(args.device).items():
        if args.only and not any(key in name for key in args.only):
            continue
        try:
            r = measure(fn, args.device)
        except Exception as exc:  # one broken case must not hide the others' figures
            print(f"| {name} | failed: {type(exc).__name__}: {str(exc)[:120]} | | | | |")
            continue
        bound = "host" if r["host_us"] > 0.8 * r["wall_us"] or r["device_us"] < 0.7 * r["wall_us"] else "device"
        print(f"| {name} | {r['host_us']:.1f} | {r['wall_us']:.1f} | {r['device_us']:.1f} | "
              f"{r['kernels']:.1f} | {bound} |", flush=True)
        results[name] = r
    print("\nslowest kernels per call (us, launches per call, name):")
    for name, r in results.items():
        print(f"  {name}:")
        for us, count, key in r["top"]:
            print(f"    {us:9.1f} {count:5.1f}  {key}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
