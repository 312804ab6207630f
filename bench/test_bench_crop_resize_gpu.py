"""GPU throughput of crop_resize (CUDA and Triton kernels); skipped without a GPU.

    python -m pytest bench/test_bench_crop_resize_gpu.py --benchmark-only

Each case is timed with CUDA events (REPS back-to-back calls per round, so launch gaps count
as they would in a model) inside pytest-benchmark's pedantic mode; the event medians are what
the ratios use, and they are stored in benchmark.extra_info with the card's name:
  focus crop, B=256 integer 96 x 96 boxes from 3 x 224 x 224 float32 images:
    - against a device-to-device copy of the same bytes (read + write of the output's size):
      the fraction of copy bandwidth reached (target >= 0.7);
    - against the official per-sample loop (reference.per_sample_crop; target >= 50x);
    - Triton against CUDA (target: Triton within 1.5x).
  glance (whole image -> 96, bicubic, align_corners=True) against F.interpolate, uint8 focus
  crop with fused normalisation, and the backward wrt images (atomic and deterministic).
"""

from __future__ import annotations

import statistics

import pytest
import torch
import torch.nn.functional as F

import gfkernels
from gfkernels import backends, reference

from bench.harness import MEDIANS, Target, add_targets
from tests.helpers import deterministic_algorithms, triton_on_gpu

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

B, C, S, P = 256, 3, 224, 96
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
REPS, ROUNDS = 20, 10


needs_cuda_kernels = pytest.mark.skipif(not backends.compiled_with_cuda(),
                                        reason="gfkernels._C built without CUDA kernels")
needs_triton = pytest.mark.skipif(not triton_on_gpu(), reason="triton unavailable on the GPU")

if torch.cuda.is_available():
    add_targets(
        Target("gpu_focus_crop", "cuda", "copy_same_bytes", 0.7,
               ">= 70% of device-to-device copy bandwidth"),
        Target("gpu_focus_crop", "cuda", "per_sample_loop", 50.0, "official per-sample loop"),
        Target("gpu_focus_crop", "triton", "cuda", 1 / 1.5, "Triton within 1.5x of CUDA"),
        Target("gpu_focus_crop", "triton", "copy_same_bytes", 0.5, "Triton vs copy (shown)"),
        Target("gpu_glance_bicubic", "cuda", "F.interpolate", 1.0, "F.interpolate bicubic"),
        Target("gpu_glance_bicubic", "triton", "cuda", 1 / 1.5, "Triton within 1.5x of CUDA"),
        Target("gpu_uint8_normalised_crop", "cuda", "unfused", 2.0,
               "to float, /255, normalise, crop"),
        Target("gpu_focus_backward_images", "cuda_deterministic", "cuda_atomic", 0.2,
               "deterministic gather no slower than 5x atomics"),
    )


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(B, C, S, S, generator=g).cuda()
    actions = torch.rand(B, 2, generator=g).cuda()
    boxes = reference.focus_boxes(actions, S, P)
    images_u8 = torch.randint(0, 256, (B, C, S, S), dtype=torch.uint8, generator=g).cuda()
    return images, actions, boxes, images_u8


def gpu_case(benchmark, group: str, case: str, fn, bytes_moved: int | None = None,
             reps: int = REPS, rounds: int = ROUNDS) -> float:
    """Times fn with CUDA events inside benchmark.pedantic; returns the median seconds/call."""
    times = []

    def one_round():
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / reps)

    benchmark.group = group
    benchmark.name = case
    warmup = 2
    benchmark.pedantic(one_round, rounds=rounds, warmup_rounds=warmup, iterations=1)
    median = statistics.median(times[-rounds:])
    MEDIANS.setdefault(group, {})[case] = median
    benchmark.extra_info.update(gpu=torch.cuda.get_device_name(), event_median_ms=median * 1e3,
                                reps_per_round=reps)
    if bytes_moved is not None:
        benchmark.extra_info["bytes_per_call"] = bytes_moved
        benchmark.extra_info["GB_per_s"] = bytes_moved / median / 1e9
    return median


def ratios(benchmark, group: str, case: str, *baselines: str) -> None:
    """Stores baseline_time / our_time for every baseline already measured in the group."""
    ours = MEDIANS.get(group, {}).get(case)
    for name in baselines:
        base = MEDIANS.get(group, {}).get(name)
        if ours and base:
            benchmark.extra_info[f"speedup_vs_{name}"] = base / ours


FOCUS_BYTES = 2 * B * C * P * P * 4  # read + write of the output's size (float32)


def test_focus_copy_same_bytes(benchmark, data):
    src = torch.empty(B, C, P, P, device="cuda")
    dst = torch.empty_like(src)
    gpu_case(benchmark, "gpu_focus_crop", "copy_same_bytes", lambda: dst.copy_(src), FOCUS_BYTES)


def test_focus_per_sample_loop(benchmark, data):
    images, actions, _, _ = data
    gpu_case(benchmark, "gpu_focus_crop", "per_sample_loop",
             lambda: reference.per_sample_crop(images, actions, P), FOCUS_BYTES, reps=2, rounds=5)


@needs_cuda_kernels
def test_focus_cuda(benchmark, data):
    images, actions, boxes, _ = data
    out = gfkernels.crop_resize(images, boxes, P, backend="cuda")
    assert torch.equal(out, reference.per_sample_crop(images, actions, P))
    gpu_case(benchmark, "gpu_focus_crop", "cuda",
             lambda: gfkernels.crop_resize(images, boxes, P, backend="cuda"), FOCUS_BYTES)
    ratios(benchmark, "gpu_focus_crop", "cuda", "copy_same_bytes", "per_sample_loop")


@needs_triton
def test_focus_triton(benchmark, data):
    images, actions, boxes, _ = data
    out = gfkernels.crop_resize(images, boxes, P, backend="triton")
    assert torch.equal(out, reference.per_sample_crop(images, actions, P))
    gpu_case(benchmark, "gpu_focus_crop", "triton",
             lambda: gfkernels.crop_resize(images, boxes, P, backend="triton"), FOCUS_BYTES)
    ratios(benchmark, "gpu_focus_crop", "triton", "copy_same_bytes", "per_sample_loop", "cuda")


GLANCE_KW = dict(mode="bicubic", align_corners=True)


def test_glance_interpolate(benchmark, data):
    images = data[0]
    gpu_case(benchmark, "gpu_glance_bicubic", "F.interpolate",
             lambda: F.interpolate(images, (P, P), **GLANCE_KW))


@pytest.mark.parametrize("backend", [pytest.param("cuda", marks=needs_cuda_kernels),
                                     pytest.param("triton", marks=needs_triton)])
def test_glance(benchmark, data, backend):
    images = data[0]
    full = torch.tensor([[0.0, 0.0, S, S]], device="cuda").expand(B, 4).contiguous()
    gpu_case(benchmark, "gpu_glance_bicubic", backend,
             lambda: gfkernels.crop_resize(images, full, P, backend=backend, **GLANCE_KW))
    ratios(benchmark, "gpu_glance_bicubic", backend, "F.interpolate", "cuda")


def test_uint8_unfused(benchmark, data):
    _, actions, _, images_u8 = data
    mean = torch.tensor(MEAN, device="cuda").view(1, C, 1, 1)
    std = torch.tensor(STD, device="cuda").view(1, C, 1, 1)

    def unfused():
        x = (images_u8.float() / 255 - mean) / std
        return reference.per_sample_crop(x, actions, P)

    gpu_case(benchmark, "gpu_uint8_normalised_crop", "unfused", unfused, reps=2, rounds=5)


@pytest.mark.parametrize("backend", [pytest.param("cuda", marks=needs_cuda_kernels),
                                     pytest.param("triton", marks=needs_triton)])
def test_uint8_fused(benchmark, data, backend):
    _, _, boxes, images_u8 = data
    gpu_case(benchmark, "gpu_uint8_normalised_crop", backend,
             lambda: gfkernels.crop_resize(images_u8, boxes, P, mean=MEAN, std=STD,
                                           backend=backend))
    ratios(benchmark, "gpu_uint8_normalised_crop", backend, "unfused", "cuda")


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("backend", [pytest.param("cuda", marks=needs_cuda_kernels),
                                     pytest.param("triton", marks=needs_triton)])
def test_focus_backward_images(benchmark, data, backend, deterministic):
    images, _, boxes, _ = data
    grad = torch.randn(B, C, P, P, device="cuda")
    op = backends.TABLE[backend].ops.crop_resize_backward_images
    args = (grad, boxes, None, list(images.shape), images.dtype, "bilinear", False, "border", None)
    case = f"{backend}_{'deterministic' if deterministic else 'atomic'}"
    with deterministic_algorithms(deterministic):
        gpu_case(benchmark, "gpu_focus_backward_images", case, lambda: op(*args), reps=5, rounds=5)
    ratios(benchmark, "gpu_focus_backward_images", case, "cuda_atomic")
