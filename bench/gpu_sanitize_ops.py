"""Every op of a compiled backend once, at small sizes: what bench/gpu_check.sh runs under
compute-sanitizer (memcheck, racecheck, synccheck), so each tool sees each kernel quickly.

    python -m bench.gpu_sanitize_ops --device cuda      # the CUDA kernels
    python -m bench.gpu_sanitize_ops --device cpu       # the same calls on the C++ CPU kernels

Covers crop_resize's forward in every mode (float32, uint8 with a fused normalisation to float16
and to float32 written in channels_last, float64), its backward wrt images (atomic and
deterministic) and wrt boxes, early_exit (float32, float64 and bfloat16 logits; a host and a
device threshold) and gather_rows. Boxes are fractional, flipped and partly off the image, so
the clamped edge paths run too. Exits non-zero if an op raises; the sanitizer's own report is
in its output.
"""

from __future__ import annotations

import argparse
import sys

import torch

import gfkernels
from tests.helpers import deterministic_algorithms


def run(device: str) -> list[str]:
    """Calls every op once on `device` with its default backend; returns what ran."""
    dev = torch.device(device)
    backend = gfkernels.backends.default_name(dev)
    g = torch.Generator().manual_seed(0)
    ran = []
    images = torch.rand(2, 3, 20, 24, generator=g, dtype=torch.float64)
    boxes = torch.tensor([[1.5, 2.0, 17.25, 15.0], [-3.0, -2.0, 30.0, 25.0], [20.0, 4.0, 6.5, 18.0]])
    batch_index = torch.tensor([1, 0, 1], device=dev)
    for mode in ("nearest", "bilinear", "bicubic"):
        align = None if mode == "nearest" else True
        opts = dict(mode=mode, batch_index=batch_index, backend=backend, padding_mode="zeros")
        if align is not None:
            opts["align_corners"] = align
        x = images.float().to(dev).requires_grad_()
        b = boxes.to(dev).requires_grad_(mode != "nearest")
        out = gfkernels.crop_resize(x, b, (7, 9), **opts)
        out.backward(torch.ones_like(out))  # backward wrt images (atomics on a GPU) and boxes
        ran.append(f"crop_resize {mode}: forward, backward images (default: atomic on a GPU)"
                   + (", backward boxes" if mode != "nearest" else ""))
        with deterministic_algorithms():
            x2 = x.detach().requires_grad_()
            gfkernels.crop_resize(x2, b.detach(), (7, 9), **opts).sum().backward()
        ran.append(f"crop_resize {mode}: backward images (deterministic)")
        u8 = (images * 255).to(torch.uint8).to(dev)
        gfkernels.crop_resize(u8, b.detach(), (5, 6), mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3],
                              out_dtype=torch.float16, **opts)
        gfkernels.crop_resize(images.to(dev), boxes.double().to(dev), (5, 6), **opts)
        ran.append(f"crop_resize {mode}: uint8 -> float16 normalised, float64")
        gfkernels.crop_resize(u8, b.detach(), (5, 6), mean=[0.5], std=[0.2],
                              memory_format=torch.channels_last, **opts)
        ran.append(f"crop_resize {mode}: uint8 -> float32 written in channels_last")
    B, K = 8, 10
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        logits = torch.randn(5, K, generator=g).to(dtype).to(dev)
        active = torch.tensor([6, 0, 3, 1, 7], device=dev)
        for threshold in (0.3, torch.tensor(0.3, dtype=torch.float64, device=dev)):
            out_logits = torch.zeros(B, K, dtype=dtype, device=dev)
            exit_step = torch.zeros(B, dtype=torch.int64, device=dev)
            keep, num_keep = gfkernels.early_exit(logits, threshold, active, out_logits, exit_step,
                                                  2, backend=backend)
        ran.append(f"early_exit {dtype}: host and device threshold")
        tensors = [active, torch.randn(5, 4, 3, generator=g).to(dev).transpose(1, 2),
                   logits.float()]
        gfkernels.gather_rows(tensors, keep, 3, backend=backend)
    ran.append("gather_rows: 3 tensors (one transposed)")
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return ran


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    args = parser.parse_args(argv)
    for line in run(args.device):
        print(line)
    print(f"all ops ran on {args.device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
