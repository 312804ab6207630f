"""Random-case generators and tolerances shared by the gfkernels tests."""

from __future__ import annotations

import contextlib
import itertools
import random

import torch

from gfkernels import backends

# The backends that run on CPU tensors here: cpp (when built), triton (under
# TRITON_INTERPRET=1) and the reference.
CPU_BACKENDS = list(backends.available_names(torch.device("cpu")))

# Backends with registered ops (torch.ops.<namespace>.*) on CPU tensors: opcheck runs on them.
OP_BACKENDS = [b for b in CPU_BACKENDS if b != "reference"]


def triton_on_gpu() -> bool:
    """Triton can run compiled kernels on the GPU (not under the CPU interpreter)."""
    return torch.cuda.is_available() and backends.TABLE["triton"].available(torch.device("cuda"))


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool = True):
    """torch.use_deterministic_algorithms(enabled) inside the block, the previous setting
    after it."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(enabled)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)

# Tolerances for comparing a backend with the float64 reference cast to the output dtype:
# a few units in the last place of the output dtype, relative to the magnitude of the values.
ULP = {
    torch.float64: 2.0 ** -52,
    torch.float32: 2.0 ** -23,
    torch.float16: 2.0 ** -10,
    torch.bfloat16: 2.0 ** -7,
}


def assert_close_to_reference(actual, expected, out_dtype, ulps=8, scale=None):
    """|actual - expected| <= ulps * eps(out_dtype) * max(1, scale) elementwise."""
    assert actual.dtype == expected.dtype == out_dtype, (actual.dtype, expected.dtype, out_dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if scale is None:
        scale = float(expected.abs().max()) if expected.numel() else 1.0
    tol = ulps * ULP[out_dtype] * max(1.0, scale)
    torch.testing.assert_close(actual.double(), expected.double(), rtol=0, atol=tol)


def random_images(n, c, h, w, dtype, generator, layout="contiguous"):
    if dtype == torch.uint8:
        images = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=generator)
    else:
        images = torch.rand((n, c, h, w), generator=generator, dtype=torch.float64).to(dtype)
    if layout == "channels_last":
        images = images.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        # A view with strides in every dimension: every other column of a wider tensor.
        wide = torch.zeros((n, c + 1, h, 2 * w), dtype=dtype)
        wide[:, :c, :, ::2] = images
        images = wide[:, :c, :, ::2]
        assert not images.is_contiguous()
    return images


def random_boxes(num, H, W, generator, kind="mixed", dtype=torch.float32):
    """Boxes of several kinds: fractional inside, tiny, huge, partly and wholly off-image,
    integer."""
    rng = random.Random(int(torch.randint(0, 2**31, (1,), generator=generator)))
    boxes = []
    for _ in range(num):
        k = rng.choice(["inside", "tiny", "huge", "partly_off", "off", "integer"]) \
            if kind == "mixed" else kind
        if k == "inside":
            x1, y1 = rng.uniform(0, W * 0.6), rng.uniform(0, H * 0.6)
            x2, y2 = rng.uniform(x1 + 0.5, W), rng.uniform(y1 + 0.5, H)
        elif k == "tiny":
            x1, y1 = rng.uniform(0, W), rng.uniform(0, H)
            x2, y2 = x1 + rng.uniform(0.01, 0.5), y1 + rng.uniform(0.01, 0.5)
        elif k == "huge":
            x1, y1 = rng.uniform(-3 * W, 0), rng.uniform(-3 * H, 0)
            x2, y2 = rng.uniform(W, 4 * W), rng.uniform(H, 4 * H)
        elif k == "partly_off":
            x1, y1 = rng.uniform(-W / 2, W / 2), rng.uniform(-H / 2, H / 2)
            x2, y2 = x1 + rng.uniform(1, W), y1 + rng.uniform(1, H)
        elif k == "off":
            x1, y1 = rng.choice([-1, 1]) * rng.uniform(W + 5, 3 * W), rng.uniform(-H, 2 * H)
            x2, y2 = x1 + rng.uniform(1, W), y1 + rng.uniform(1, H)
        else:  # integer
            x1, y1 = float(rng.randint(-2, W - 1)), float(rng.randint(-2, H - 1))
            x2, y2 = x1 + rng.randint(1, W), y1 + rng.randint(1, H)
        if rng.random() < 0.1:  # flipped boxes are allowed: they sample in reverse order
            x1, x2 = x2, x1
        boxes.append([x1, y1, x2, y2])
    return torch.tensor(boxes, dtype=dtype)


# Boxes of the GPU gradchecks ((3, 4) outputs, align_corners=False): every sample position at
# least 0.02 from an integer, where the bilinear taps have a kink that finite differences
# straddle (x2 = 6.1 in the first box once put one exactly on 5.0 and failed every backend).
GRADCHECK_BOXES = [[1.3, 0.7, 6.15, 7.2], [-1.45, 2.35, 10.2, 5.9], [7.3, 6.6, 2.2, 1.15]]

MODES = ["bilinear", "bicubic", "nearest"]
IMAGE_DTYPES = [torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64]


def mode_options():
    """Every valid (mode, align_corners, padding_mode) of crop_resize."""
    for mode, align_corners, padding in itertools.product(MODES, [False, True],
                                                          ["border", "zeros"]):
        if mode == "nearest" and align_corners:
            continue
        yield mode, align_corners, padding
