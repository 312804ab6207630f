"""CPU throughput of crop_resize against the ways a user would otherwise crop and resize.

    .venv/bin/python -m pytest bench/test_bench_crop_resize.py --benchmark-only

Workloads (GFNet at ResNet/MobileNet sizes): a focus crop of B=256 integer 96 x 96 boxes
from 3 x 224 x 224 float32 images; the glance (whole image -> 96, bilinear and bicubic);
uint8 images cropped with fused normalisation; patches for a channels_last network (written in
that layout by the kernel, against a contiguous crop reordered by .contiguous()); the backward
wrt images of a focus crop.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

import gfkernels
from gfkernels import reference

from bench.harness import Target, add_targets, run_case

B, C, S, P = 256, 3, 224, 96
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

add_targets(
    Target("focus_crop", "gfkernels", "per_sample_loop", 3.0, "official per-sample slicing"),
    Target("focus_crop", "gfkernels", "roi_align", 5.0, "torchvision roi_align"),
    Target("focus_crop", "gfkernels", "grid_sample", 5.0, "affine_grid + grid_sample"),
    Target("focus_crop", "gfkernels", "gather", 1.0, "advanced-indexing gather (no target; shown)"),
    Target("focus_crop", "gfkernels", "copy_of_output", 0.5, "no slower than 2x a plain copy"),
    Target("glance_bilinear", "gfkernels", "F.interpolate", 1.2, "F.interpolate bilinear"),
    Target("glance_bicubic", "gfkernels", "F.interpolate", 1.5, "F.interpolate bicubic"),
    Target("uint8_normalised_crop", "gfkernels_fused", "unfused", 3.0,
           "to float, /255, normalise, crop"),
    Target("channels_last_focus", "written_channels_last", "crop_then_reorder", 1.5,
           "uint8 focus crop, normalised, for a channels_last network: crop + .contiguous()"),
    Target("channels_last_glance", "written_channels_last", "crop_then_reorder", 1.0,
           "uint8 bicubic glance, normalised, for a channels_last network: crop + .contiguous()"),
    Target("channels_last_focus", "written_channels_last", "written_contiguous", None,
           "the same crop written contiguous (what the layout costs the kernel; shown)"),
    Target("channels_last_glance", "written_channels_last", "written_contiguous", None,
           "the same crop written contiguous (what the layout costs the kernel; shown)"),
    Target("focus_backward_images", "gfkernels", "grid_sample_backward", 3.0,
           "grid_sample's backward"),
    Target("focus_backward_images", "gfkernels", "zeros_of_images", 0.5,
           "within 2x of allocating the zero gradient (no target in the issue; shown)"),
)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(B, C, S, S, generator=g)
    actions = torch.rand(B, 2, generator=g)
    boxes = gfkernels.focus_boxes(actions, S, P)
    return images, actions, boxes


def affine_grid_for(boxes, size, image_size):
    """The sampling grid of crop_resize(align_corners=False) as affine_grid's theta."""
    x1, y1, x2, y2 = boxes.unbind(1)
    theta = torch.zeros(boxes.shape[0], 2, 3, dtype=boxes.dtype)
    theta[:, 0, 0] = (x2 - x1) / image_size
    theta[:, 0, 2] = (x1 + x2) / image_size - 1
    theta[:, 1, 1] = (y2 - y1) / image_size
    theta[:, 1, 2] = (y1 + y2) / image_size - 1
    return F.affine_grid(theta, (boxes.shape[0], C, size, size), align_corners=False)


def gather_crop(images, boxes):
    top, left = boxes[:, 1].long(), boxes[:, 0].long()
    ar = torch.arange(P)
    rows, cols = top[:, None] + ar, left[:, None] + ar
    n = torch.arange(images.shape[0])[:, None, None]
    return images[n, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


FOCUS_CASES = {
    "gfkernels": lambda im, a, bx: gfkernels.crop_resize(im, bx, P),
    "per_sample_loop": lambda im, a, bx: reference.per_sample_crop(im, a, P),
    "gather": lambda im, a, bx: gather_crop(im, bx),
    "roi_align": lambda im, a, bx: torchvision.ops.roi_align(
        im, torch.cat([torch.arange(B, dtype=bx.dtype)[:, None], bx], 1), P,
        sampling_ratio=1, aligned=True),
    "grid_sample": lambda im, a, bx: F.grid_sample(im, affine_grid_for(bx, P, S),
                                                   align_corners=False),
}


@pytest.mark.parametrize("case", list(FOCUS_CASES) + ["copy_of_output"])
def test_focus_crop(benchmark, data, case):
    images, actions, boxes = data
    if case == "copy_of_output":
        # The memory floor: produce a new tensor of the output's bytes by one sequential copy
        # (allocation included, as every crop method allocates its output).
        src = torch.rand(B, C, P, P)
        run_case(benchmark, "focus_crop", case, src.clone)
        return
    fn = FOCUS_CASES[case]
    if case in ("gfkernels", "gather", "roi_align"):
        torch.testing.assert_close(fn(images, actions, boxes),
                                   reference.per_sample_crop(images, actions, P))
    run_case(benchmark, "focus_crop", case, lambda: fn(images, actions, boxes),
             rounds=5 if case == "per_sample_loop" else 10)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("case", ["gfkernels", "F.interpolate"])
def test_glance(benchmark, data, mode, case):
    images = data[0]
    whole = torch.tensor([[0.0, 0.0, S, S]]).expand(B, 4).contiguous()
    if case == "gfkernels":
        fn = lambda: gfkernels.crop_resize(images, whole, P, mode=mode, align_corners=True)  # noqa
    else:
        fn = lambda: F.interpolate(images, size=P, mode=mode, align_corners=True)  # noqa
    run_case(benchmark, f"glance_{mode}", case, fn)


@pytest.mark.parametrize("case", ["gfkernels_fused", "unfused"])
def test_uint8_normalised_crop(benchmark, data, case):
    _, actions, boxes = data
    images = (data[0] * 255).to(torch.uint8)
    mean, std = torch.tensor(MEAN).view(1, C, 1, 1), torch.tensor(STD).view(1, C, 1, 1)
    if case == "gfkernels_fused":
        fn = lambda: gfkernels.crop_resize(images, boxes, P, mean=MEAN, std=STD)  # noqa
    else:
        fn = lambda: gfkernels.crop_resize(((images.float() / 255) - mean) / std, boxes, P)  # noqa
    run_case(benchmark, "uint8_normalised_crop", case, fn)


@pytest.mark.parametrize("crop", ["focus", "glance"])
@pytest.mark.parametrize("case", ["written_contiguous", "written_channels_last",
                                  "crop_then_reorder"])
def test_channels_last_patches(benchmark, data, crop, case):
    """The engine's crops for a channels_last network (uint8 images, normalisation fused), at
    the batch of mobilenet_v3_large's engine (64). Times of new outputs of several MB depend on
    whether glibc hands out memory it kept or memory fresh from the OS (~1700 page faults per
    call for 7 MB here, 0.4 -> 2.1 ms), which depends on earlier allocations: in about one run
    in three the first case of the group got fresh memory at every call. The contiguous crop,
    shown without a target, goes first; at B = 256 (28 MB) every case was bimodal."""
    n = 64
    boxes = data[2][:n]
    images = (data[0][:n] * 255).to(torch.uint8)
    if crop == "glance":
        boxes = torch.tensor([[0.0, 0.0, S, S]]).expand(n, 4).contiguous()
    options = dict(mode="bicubic" if crop == "glance" else "bilinear",
                   align_corners=crop == "glance", mean=MEAN, std=STD)
    direct = gfkernels.crop_resize(images, boxes, P, memory_format=torch.channels_last,
                                   **options)
    reordered = gfkernels.crop_resize(images, boxes, P, **options).contiguous(
        memory_format=torch.channels_last)
    assert direct.stride() == reordered.stride() and torch.equal(direct, reordered)
    if case == "written_channels_last":
        fn = lambda: gfkernels.crop_resize(images, boxes, P,  # noqa: E731
                                           memory_format=torch.channels_last, **options)
    elif case == "crop_then_reorder":
        fn = lambda: gfkernels.crop_resize(images, boxes, P, **options).contiguous(  # noqa: E731
            memory_format=torch.channels_last)
    else:
        fn = lambda: gfkernels.crop_resize(images, boxes, P, **options)  # noqa: E731
    run_case(benchmark, f"channels_last_{crop}", case, fn, rounds=40, warmup_rounds=5)


@pytest.mark.parametrize("case", ["gfkernels", "grid_sample_backward", "zeros_of_images"])
def test_focus_backward_images(benchmark, data, case):
    images, _, boxes = data
    if case == "zeros_of_images":
        # The floor of any backward wrt images: allocating and zeroing a dense gradient.
        run_case(benchmark, "focus_backward_images", case, lambda: torch.zeros_like(images),
                 rounds=5)
        return
    images = images.clone().requires_grad_()
    grad = torch.rand(B, C, P, P)
    if case == "gfkernels":
        out = gfkernels.crop_resize(images, boxes, P)
    else:
        out = F.grid_sample(images, affine_grid_for(boxes, P, S), align_corners=False)
    # Time only the backward: retain the graph and differentiate it repeatedly.
    fn = lambda: torch.autograd.grad(out, images, grad, retain_graph=True)  # noqa
    run_case(benchmark, "focus_backward_images", case, fn, rounds=5)
