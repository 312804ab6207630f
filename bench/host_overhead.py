"""Host time per call of the ops' Python path, on tiny CPU tensors (the kernels do next to
nothing, so what is timed is the Python wrapper, the dispatcher and the glue around them).

    python -m bench.host_overhead                 # a table, microseconds per call
    python -m bench.host_overhead --json out.json

On a GPU the same host time is spent before every launch: at GFNet's sizes (the focus crop at
B = 256 on an H100/H200 takes some 10-20 us) a call's host time is as long as its kernel, so it
bounds the engine's step rate. Each row times `calls` calls, best of `repeats`:

    crop_resize (op)       torch.ops.gfkernels.crop_resize called directly: the dispatcher and
                           the kernel, the floor no Python wrapper can go under
    crop_resize            gfkernels.crop_resize: every argument checked, backend lookup, the op
    Kernels.crop           a crop with its options checked once (gfkernels.Kernels.crop), as
                           the model holds its two crops: per call the tensors are checked
    glance_patches         the model's glance crop (its whole-image boxes and its glance Crop)
    focus_patches          the model's focus crop (focus boxes from actions and its focus Crop)
    early_exit (op)        torch.ops.gfkernels.early_exit directly
    early_exit             gfkernels.early_exit
    Kernels.early_exit     the same through the model's kernels (the engines' path)
    gather_rows (op)       torch.ops.gfkernels.gather_rows directly (3 tensors)
    gather_rows            gfkernels.gather_rows (3 tensors)
    Kernels.gather_rows    the same through the model's kernels (the engines' path)

Ours is a row minus its "(op)" row. Run with one thread (OMP_NUM_THREADS=1) on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def per_call_us(fns: dict, calls: int, repeats: int) -> dict:
    """{name: microseconds per call}: the best of `repeats` rounds of `calls` calls, the cases
    interleaved round by round (so that a busy spell of the machine hits every case alike),
    timed in CPU time of this thread (steadier than wall time on a shared machine)."""
    for fn in fns.values():
        for _ in range(min(calls, 200)):  # warm-up: caches, first-call paths
            fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.thread_time()
            for _ in range(calls):
                fn()
            best[name] = min(best[name], time.thread_time() - start)
    return {name: round(seconds / calls * 1e6, 2) for name, seconds in best.items()}


def cases(device: str = "cpu") -> dict:
    import gfkernels
    from gfnet.models.patches import Patches, focus_boxes, model_kernels, whole_image_boxes

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 12, 12), generator=g, dtype=torch.uint8).to(device)
    boxes = torch.tensor([[1.0, 1.0, 5.0, 5.0], [0.0, 2.0, 4.0, 6.0]], device=device)
    actions = torch.rand(2, 2, generator=g).to(device)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    logits = torch.randn(4, 10, generator=g).to(device)
    active = torch.arange(4, device=device)
    out_logits = torch.empty(4, 10, device=device)
    exit_step = torch.zeros(4, dtype=torch.int64, device=device)
    threshold = torch.tensor(0.5, dtype=torch.float64)
    rows = [active, torch.randn(4, 8, device=device), torch.randn(4, 2, 3, 3, device=device)]
    keep = torch.tensor([2, 0, 1, 3], device=device)
    ops = torch.ops.gfkernels
    kernels = model_kernels(None)  # as a GFNet model holds them
    crop = kernels.crop(4, mean=mean, std=std, out_dtype=torch.float32)
    patches = Patches(kernels, 4, mean=mean, std=std)  # the model's two crops

    def glance():
        return patches.glance(images, whole_image_boxes(images, images.shape[0]))

    def focus():
        return patches.focus(images, focus_boxes(actions, tuple(images.shape[-2:]), 4))

    return {
        "crop_resize (op)": lambda: ops.crop_resize(images, boxes, None, [4, 4], "bilinear", False,
                                                    "border", mean, std, torch.float32),
        "crop_resize": lambda: gfkernels.crop_resize(images, boxes, 4, mean=mean, std=std),
        "Kernels.crop": lambda: crop(images, boxes),
        "glance_patches": glance,
        "focus_patches": focus,
        "early_exit (op)": lambda: ops.early_exit(logits, threshold, active, out_logits, exit_step, 1),
        "early_exit": lambda: gfkernels.early_exit(logits, 0.5, active, out_logits, exit_step, 1),
        "Kernels.early_exit": lambda: kernels.early_exit(logits, 0.5, active, out_logits, exit_step, 1),
        "gather_rows (op)": lambda: ops.gather_rows(rows, keep, 3),
        "gather_rows": lambda: gfkernels.gather_rows(rows, keep, 3),
        "Kernels.gather_rows": lambda: kernels.gather_rows(rows, keep, 3),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write {case: microseconds per call} here")
    args = parser.parse_args(argv)
    with torch.inference_mode():  # as the engine runs them
        results = per_call_us(cases(), args.calls, args.repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); us per call, best of "
          f"{args.repeats} x {args.calls} calls")
    print("| call | us |\n|---|---:|")
    for name, us in results.items():
        print(f"| {name} | {us:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
