"""crop_resize on the CPU (C++ kernel) against the reference and against the PyTorch and
torchvision operations it generalises; gradients and opcheck on every backend that runs on CPU
tensors here (cpp, triton under TRITON_INTERPRET=1, reference)."""

from __future__ import annotations

import math


import re

import pytest
import torch
import torch.nn.functional as F
import torchvision

import gfkernels
from gfkernels import reference

from gfkernels import backends
from tests.helpers import (CPU_BACKENDS, GRADCHECK_BOXES, IMAGE_DTYPES, MODES, OP_BACKENDS,
                           assert_close_to_reference, mode_options, random_boxes, random_images)


# ---------------------------------------------------------------------------------------
# Agreement with the reference on random inputs
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", IMAGE_DTYPES, ids=str)
@pytest.mark.parametrize("mode,align_corners,padding_mode", list(mode_options()))
def test_matches_reference(mode, align_corners, padding_mode, dtype, generator):
    for trial in range(3):
        N, C = int(torch.randint(1, 4, (1,), generator=generator)), [1, 3, 4][trial]
        H, W = [int(v) for v in torch.randint(5, 40, (2,), generator=generator)]
        h, w = [int(v) for v in torch.randint(1, 20, (2,), generator=generator)]
        B = int(torch.randint(1, 9, (1,), generator=generator))
        layout = ["contiguous", "channels_last", "strided"][trial]
        images = random_images(N, C, H, W, dtype, generator, layout)
        boxes = random_boxes(B, H, W, generator, dtype=[torch.float32, torch.float64][trial % 2])
        batch_index = torch.randint(0, N, (B,), generator=generator)
        kwargs = dict(batch_index=batch_index, mode=mode, align_corners=align_corners,
                      padding_mode=padding_mode)
        if trial == 2:
            kwargs.update(mean=torch.rand(C, generator=generator).tolist(),
                          std=(0.2 + torch.rand(C, generator=generator)).tolist())
        out = gfkernels.crop_resize(images, boxes, (h, w), **kwargs)
        expected = reference.crop_resize(images, boxes, (h, w), **kwargs)
        out_dtype = dtype if dtype.is_floating_point else torch.float32
        assert out.is_contiguous()
        assert_close_to_reference(out, expected, out_dtype)


@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16, torch.float32,
                                       torch.float64], ids=str)
@pytest.mark.parametrize("in_dtype", [torch.uint8, torch.float16, torch.float32], ids=str)
def test_out_dtype(in_dtype, out_dtype, generator):
    images = random_images(2, 3, 17, 23, in_dtype, generator)
    boxes = random_boxes(5, 17, 23, generator)
    batch_index = torch.tensor([0, 1, 1, 0, 1])
    kwargs = dict(batch_index=batch_index, mode="bicubic", out_dtype=out_dtype,
                  mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    out = gfkernels.crop_resize(images, boxes, (9, 11), **kwargs)
    assert_close_to_reference(out, reference.crop_resize(images, boxes, (9, 11), **kwargs),
                              out_dtype)


def test_many_boxes_per_image(generator):
    images = random_images(2, 3, 31, 29, torch.float32, generator)
    boxes = random_boxes(64, 31, 29, generator)
    batch_index = torch.randint(0, 2, (64,), generator=generator)
    out = gfkernels.crop_resize(images, boxes, 7, batch_index=batch_index, mode="bicubic")
    expected = reference.crop_resize(images, boxes, 7, batch_index=batch_index, mode="bicubic")
    assert_close_to_reference(out, expected, torch.float32)


def test_empty_batch():
    images = torch.rand(2, 3, 8, 8)
    out = gfkernels.crop_resize(images, torch.zeros(0, 4), 5,
                                batch_index=torch.zeros(0, dtype=torch.long))
    assert out.shape == (0, 3, 5, 5)


def test_extreme_boxes_stay_in_bounds():
    """Huge and far-away boxes read only valid pixels: border gives edge values, zeros gives 0."""
    images = torch.rand(1, 2, 6, 7, dtype=torch.float64)
    boxes = torch.tensor([[-1e30, -1e30, 1e30, 1e30], [1e6, 1e6, 1e6 + 3, 1e6 + 3],
                          [-1e9, 2.0, -1e9 + 5, 4.0]], dtype=torch.float64)
    bi = torch.zeros(3, dtype=torch.long)
    for mode in MODES:
        for padding in ["border", "zeros"]:
            out = gfkernels.crop_resize(images, boxes, (4, 5), batch_index=bi, mode=mode,
                                        padding_mode=padding)
            assert torch.isfinite(out).all()
            expected = reference.crop_resize(images, boxes, (4, 5), batch_index=bi, mode=mode,
                                             padding_mode=padding)
            assert_close_to_reference(out, expected, torch.float64)
            if padding == "zeros":
                assert (out[1] == 0).all() and (out[2] == 0).all()
            else:  # far bottom-right: the bottom-right pixel
                assert torch.equal(out[1], images[0, :, -1:, -1:].expand(2, 4, 5))


# ---------------------------------------------------------------------------------------
# Agreement with the operations crop_resize generalises
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("mode,align_corners", [("bilinear", False), ("bilinear", True),
                                                ("bicubic", False), ("bicubic", True),
                                                ("nearest", False)])
@pytest.mark.parametrize("size", [(7, 13), (96, 96), (50, 33)])
def test_whole_image_equals_interpolate(mode, align_corners, size, dtype, generator):
    images = random_images(3, 3, 45, 37, dtype, generator)
    boxes = torch.tensor([[0.0, 0.0, 37.0, 45.0]]).expand(3, 4).contiguous()
    out = gfkernels.crop_resize(images, boxes, size, mode=mode, align_corners=align_corners)
    torch_mode = "nearest-exact" if mode == "nearest" else mode
    expected = F.interpolate(images, size=size, mode=torch_mode,
                             align_corners=None if mode == "nearest" else align_corners)
    # PyTorch computes float32 positions and weights in float32 (ours: float64 positions),
    # so the two differ by tens of float32 ulps; test_matches_reference holds ours to 8.
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out, expected, rtol=0, atol=tol)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_integer_box_equals_slicing(mode, layout, generator):
    """GFNet's focus patch: the official per-sample slicing, bit for bit."""
    images = random_images(8, 3, 40, 36, torch.float32, generator, layout)
    actions = torch.rand(8, 2, generator=generator)
    boxes = gfkernels.focus_boxes(actions, (40, 36), 16)
    out = gfkernels.crop_resize(images, boxes, 16, mode=mode)
    assert torch.equal(out, reference.per_sample_crop(images, actions, 16))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_focus_boxes_formula(dtype, generator):
    """focus_boxes against its formula written out per sample: top-left (floor(a[1] * (W - P)),
    floor(a[0] * (H - P))) in float64 with a clamped to [0, 1], size P, in the actions' dtype."""
    H, W, P = 41, 37, 16
    actions = torch.cat([torch.rand(20, 2, generator=generator, dtype=torch.float64),
                         torch.tensor([[0.0, 1.0], [1.0, 0.0], [-0.5, 1.5], [0.999999, 1e-9]],
                                      dtype=torch.float64)]).to(dtype)
    boxes = gfkernels.focus_boxes(actions, (H, W), P)
    assert boxes.dtype == dtype and boxes.shape == (24, 4)
    for a, box in zip(actions.tolist(), boxes.tolist()):
        row, col = (min(max(v, 0.0), 1.0) for v in a)
        left, top = math.floor(col * (W - P)), math.floor(row * (H - P))
        assert box == [left, top, left + P, top + P], (a, box)


def test_integer_box_uint8_normalised(generator):
    images = random_images(4, 3, 30, 30, torch.uint8, generator)
    actions = torch.rand(4, 2, generator=generator)
    boxes = gfkernels.focus_boxes(actions, 30, 12)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    out = gfkernels.crop_resize(images, boxes, 12, mean=mean, std=std)
    unfused = (reference.per_sample_crop(images, actions, 12).float() / 255
               - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(out, unfused, rtol=0, atol=4e-6)


def test_matches_roi_align(generator):
    """roi_align(aligned=True, sampling_ratio=1) samples the same positions bilinearly; it
    clamps positions in [-1, 0) and (H-1, H] to the edge like our border padding, so the two
    agree on boxes whose sample positions stay within [-1, H]."""
    images = random_images(3, 4, 33, 41, torch.float64, generator)
    boxes = []
    for _ in range(12):
        x1, y1 = float(torch.rand(1, generator=generator)) * 30 - 0.4, \
            float(torch.rand(1, generator=generator)) * 22 - 0.4
        boxes.append([x1, y1, x1 + 1 + float(torch.rand(1, generator=generator)) * 10,
                      y1 + 1 + float(torch.rand(1, generator=generator)) * 10])
    boxes = torch.tensor(boxes, dtype=torch.float64)
    batch_index = torch.randint(0, 3, (12,), generator=generator)
    out = gfkernels.crop_resize(images, boxes, (5, 6), batch_index=batch_index)
    rois = torch.cat([batch_index[:, None].double(), boxes], dim=1)
    expected = torchvision.ops.roi_align(images, rois, (5, 6), spatial_scale=1.0,
                                         sampling_ratio=1, aligned=True)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------
# Output layout: patches written straight into channels_last
# ---------------------------------------------------------------------------------------


def channels_last_strides(shape):
    return torch.empty(shape, memory_format=torch.channels_last).stride()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("image_layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("mode", MODES)
def test_channels_last_output(backend, image_layout, mode, generator):
    """memory_format=torch.channels_last: the kernel's own output has channels_last strides
    (not a reordered copy of a contiguous one: the op returns the tensor it allocated) and the
    reference's values, for every image layout, dtype, interpolating and copied boxes, C = 1."""
    for trial, (dtype, C) in enumerate([(torch.uint8, 3), (torch.float32, 4), (torch.float64, 1),
                                        (torch.bfloat16, 3), (torch.float16, 2)]):
        N, H, W, h, w = 3, 23 + trial, 19, 7, 5 + trial
        images = random_images(N, C, H, W, dtype, generator, image_layout)
        boxes = random_boxes(6, H, W, generator, kind="partly_off")
        boxes[0] = torch.tensor([2.0, 3.0, 2.0 + w, 3.0 + h])  # an integer box: the copy path
        bi = torch.randint(0, N, (6,), generator=generator)
        kwargs = dict(batch_index=bi, mode=mode, mean=[0.3] * C, std=[0.7] * C,
                      memory_format=torch.channels_last)
        out = gfkernels.crop_resize(images, boxes, (h, w), backend=backend, **kwargs)
        expected = reference.crop_resize(images, boxes, (h, w), **kwargs)
        assert out.stride() == channels_last_strides(out.shape), (out.stride(), dtype, C)
        out_dtype = dtype if dtype.is_floating_point else torch.float32
        assert_close_to_reference(out, expected, out_dtype)
        contiguous = gfkernels.crop_resize(images, boxes, (h, w), backend=backend,
                                           **{**kwargs, "memory_format": torch.contiguous_format})
        assert contiguous.is_contiguous() and torch.equal(out, contiguous)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_channels_last_output_gradients(backend, generator):
    """Gradients through a channels_last output equal those through a contiguous one, with the
    incoming gradient in either layout (the backward ops read it through its strides)."""
    images = random_images(2, 3, 13, 11, torch.float64, generator)
    boxes = gradcheck_boxes(13, 11, generator)
    bi = torch.tensor([0, 1, 1, 0])
    grad = torch.randn(4, 3, 6, 5, generator=generator, dtype=torch.float64)
    results = []
    for out_format in (torch.contiguous_format, torch.channels_last):
        for grad_format in (torch.contiguous_format, torch.channels_last):
            im, bx = images.clone().requires_grad_(), boxes.clone().requires_grad_()
            out = gfkernels.crop_resize(im, bx, (6, 5), batch_index=bi, mode="bicubic",
                                        std=[0.5, 2.0, 1.0], memory_format=out_format,
                                        backend=backend)
            out.backward(grad.contiguous(memory_format=grad_format))
            results.append((im.grad, bx.grad))
    for gi, gb in results[1:]:
        torch.testing.assert_close(gi, results[0][0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gb, results[0][1], rtol=1e-12, atol=1e-12)

    def fn(im, bx):
        return gfkernels.crop_resize(im, bx, (4, 3), batch_index=bi, mode="bilinear",
                                     memory_format=torch.channels_last, backend=backend)

    assert torch.autograd.gradcheck(fn, (images.requires_grad_(), boxes.requires_grad_()),
                                    eps=1e-6, atol=1e-7, fast_mode=backend != "cpp")


def test_kernels_crop_memory_format(generator):
    """Kernels.crop carries the layout as an option: checked once, kept in its repr."""
    images = random_images(2, 3, 16, 16, torch.uint8, generator)
    boxes = random_boxes(2, 16, 16, generator)
    crop = gfkernels.Kernels().crop(8, memory_format=torch.channels_last)
    assert "channels_last" in repr(crop)
    out = crop(images, boxes)
    assert out.stride() == channels_last_strides(out.shape)
    with pytest.raises(ValueError, match="memory_format must be torch.contiguous_format or "
                                         "torch.channels_last"):
        gfkernels.Kernels().crop(8, memory_format=torch.channels_last_3d)


# ---------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------


def gradcheck_boxes(H, W, generator, n=4):
    # Fractional boxes away from the sample-position kinks (integers) that finite
    # differences would straddle.
    return (random_boxes(n, H, W, generator, kind="partly_off", dtype=torch.float64)
            + 0.01 * torch.rand(n, 4, generator=generator, dtype=torch.float64))


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_gpu_gradcheck_boxes(mode):
    """The boxes of the GPU gradcheck (tests/cuda) are clear of the taps' kinks, and the C++
    kernels pass that gradcheck on them: a GPU failure there is the GPU's."""
    for x1, y1, x2, y2 in GRADCHECK_BOXES:
        xs = [x1 + (j + 0.5) * (x2 - x1) / 4 - 0.5 for j in range(4)]
        ys = [y1 + (i + 0.5) * (y2 - y1) / 3 - 0.5 for i in range(3)]
        assert min(abs(v - round(v)) for v in xs + ys) >= 0.02, (x1, y1, x2, y2)
    images = torch.rand(2, 2, 8, 9, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor(GRADCHECK_BOXES, dtype=torch.float64, requires_grad=True)
    bi = torch.tensor([1, 0, 1])

    def fn(x, b):
        return gfkernels.crop_resize(x, b, (3, 4), batch_index=bi, mode=mode, std=[0.5, 2.0],
                                     padding_mode="zeros", backend="cpp")

    assert torch.autograd.gradcheck(fn, (images, boxes), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode,align_corners,padding_mode",
                         [o for o in mode_options() if o[0] != "nearest"])
def test_gradcheck(backend, mode, align_corners, padding_mode, generator):
    images = random_images(2, 2, 9, 11, torch.float64, generator).requires_grad_()
    boxes = gradcheck_boxes(9, 11, generator).requires_grad_()
    batch_index = torch.tensor([0, 1, 1, 0])

    def fn(images, boxes):
        return gfkernels.crop_resize(images, boxes, (5, 4), batch_index=batch_index, mode=mode,
                                     align_corners=align_corners, padding_mode=padding_mode,
                                     std=[0.5, 2.0], backend=backend)

    # The full Jacobian for the C++ kernels; random projections of it (fast mode) for the
    # interpreted Triton kernels and the reference, where a full one takes minutes.
    assert torch.autograd.gradcheck(fn, (images, boxes), eps=1e-6, atol=1e-7,
                                    fast_mode=backend != "cpp")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "nearest"])
def test_backward_matches_reference(mode, dtype, generator):
    images = random_images(3, 3, 21, 19, dtype, generator, "channels_last")
    boxes = random_boxes(6, 21, 19, generator)
    batch_index = torch.tensor([2, 0, 2, 1, 2, 0])
    grad = torch.randn(6, 3, 8, 7, generator=generator).to(dtype)
    results = []
    for fn in (gfkernels.crop_resize, reference.crop_resize):
        im = images.detach().clone().requires_grad_()
        bx = boxes.detach().clone().requires_grad_()
        out = fn(im, bx, (8, 7), batch_index=batch_index, mode=mode, padding_mode="zeros")
        out.backward(grad)
        # nearest is piecewise constant in the boxes: the reference has no graph to them.
        results.append((im.grad, torch.zeros_like(bx) if bx.grad is None else bx.grad))
    (gi, gb), (ri, rb) = results
    assert_close_to_reference(gi, ri, dtype, ulps=16, scale=float(ri.abs().max()))
    torch.testing.assert_close(gb, rb, rtol=1e-4, atol=1e-3 * max(1.0, float(rb.abs().max())))


@pytest.mark.parametrize("mode,padding_mode", [("bilinear", "border"), ("bilinear", "zeros"),
                                               ("bicubic", "zeros")])
def test_box_gradient_matches_grid_sample(mode, padding_mode, generator):
    """Autograd through affine_grid-style grids + grid_sample, on the same sample positions,
    gives the same outputs and the same gradient wrt the boxes."""
    H, W, h, w = 13, 17, 6, 5
    images = random_images(2, 3, H, W, torch.float64, generator)
    boxes = gradcheck_boxes(H, W, generator).requires_grad_()
    batch_index = torch.tensor([1, 0, 0, 1])
    grad = torch.randn(4, 3, h, w, generator=generator, dtype=torch.float64)

    out = gfkernels.crop_resize(images, boxes, (h, w), batch_index=batch_index, mode=mode,
                                padding_mode=padding_mode)
    (ours,) = torch.autograd.grad(out, boxes, grad)

    xs = reference.source_positions(boxes[:, 0], boxes[:, 2], w, False)  # (B, w)
    ys = reference.source_positions(boxes[:, 1], boxes[:, 3], h, False)  # (B, h)
    # grid_sample with align_corners=True maps -1..1 to pixel centres 0..size-1.
    gx = (2 * xs / (W - 1) - 1)[:, None, :].expand(-1, h, -1)
    gy = (2 * ys / (H - 1) - 1)[:, :, None].expand(-1, -1, w)
    grid = torch.stack([gx, gy], dim=-1)
    theirs_out = F.grid_sample(images[batch_index], grid, mode=mode, padding_mode=padding_mode,
                               align_corners=True)
    (theirs,) = torch.autograd.grad(theirs_out, boxes, grad)
    torch.testing.assert_close(out, theirs_out, rtol=0, atol=1e-10)
    torch.testing.assert_close(ours, theirs, rtol=1e-8, atol=1e-8)


def test_backward_is_deterministic(generator):
    images = random_images(2, 3, 40, 40, torch.float32, generator).requires_grad_()
    boxes = random_boxes(64, 40, 40, generator).requires_grad_()
    batch_index = torch.randint(0, 2, (64,), generator=generator)
    grad = torch.randn(64, 3, 12, 12, generator=generator)
    runs = []
    for _ in range(3):
        out = gfkernels.crop_resize(images, boxes, 12, batch_index=batch_index, mode="bicubic")
        runs.append(torch.autograd.grad(out, (images, boxes), grad))
    for gi, gb in runs[1:]:
        assert torch.equal(gi, runs[0][0]) and torch.equal(gb, runs[0][1])


def test_nearest_box_gradient_is_zero(generator):
    images = random_images(1, 1, 8, 8, torch.float64, generator)
    boxes = torch.tensor([[1.3, 0.7, 6.2, 5.9]], dtype=torch.float64, requires_grad=True)
    out = gfkernels.crop_resize(images, boxes, 4, mode="nearest")
    (g,) = torch.autograd.grad(out.sum(), boxes)
    assert torch.equal(g, torch.zeros_like(g))


# ---------------------------------------------------------------------------------------
# torch.library integration
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", OP_BACKENDS)
@pytest.mark.parametrize("case", ["float_grad", "uint8_norm", "channels_last_bicubic",
                                  "channels_last_output", "channels_last_output_uint8"])
def test_opcheck(backend, case, generator):
    op = backends.TABLE[backend].ops.crop_resize.default
    if case == "float_grad":
        images = random_images(2, 3, 12, 10, torch.float64, generator).requires_grad_()
        boxes = gradcheck_boxes(12, 10, generator, n=3).requires_grad_()
        args = (images, boxes, torch.tensor([0, 1, 1]), [5, 4], "bilinear", False, "zeros",
                None, None, torch.float64)
    elif case == "uint8_norm":
        images = random_images(2, 3, 12, 10, torch.uint8, generator)
        boxes = random_boxes(2, 12, 10, generator)
        args = (images, boxes, None, [6, 6], "nearest", False, "border", [0.5, 0.4, 0.3],
                [0.2, 0.3, 0.4], torch.float32)
    elif case == "channels_last_bicubic":
        images = random_images(2, 3, 12, 10, torch.float32, generator,
                               "channels_last").requires_grad_()
        boxes = gradcheck_boxes(12, 10, generator, n=2).float().requires_grad_()
        args = (images, boxes, None, [7, 3], "bicubic", True, "border", None, [0.5],
                torch.float32)
    elif case == "channels_last_output":  # the fake kernel's strides must match the kernel's
        images = random_images(2, 3, 12, 10, torch.float64, generator).requires_grad_()
        boxes = gradcheck_boxes(12, 10, generator, n=3).requires_grad_()
        args = (images, boxes, torch.tensor([1, 0, 1]), [5, 4], "bilinear", False, "zeros",
                None, [0.5, 1.0, 2.0], torch.float64, True)
    else:
        images = random_images(2, 3, 12, 10, torch.uint8, generator)
        boxes = random_boxes(2, 12, 10, generator)
        args = (images, boxes, None, [6, 5], "bicubic", False, "border", [0.5, 0.4, 0.3],
                [0.2, 0.3, 0.4], torch.bfloat16, True)
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("backend", OP_BACKENDS)
def test_backward_ops_opcheck(backend, generator):
    grad = torch.randn(3, 2, 5, 4, dtype=torch.float64, generator=generator)
    boxes = gradcheck_boxes(9, 8, generator, n=3)
    images = random_images(2, 2, 9, 8, torch.float64, generator)
    bi = torch.tensor([1, 0, 1])
    ops = backends.TABLE[backend].ops
    torch.library.opcheck(ops.crop_resize_backward_images.default,
                          (grad, boxes, bi, [2, 2, 9, 8], torch.float64, "bicubic", False,
                           "border", None))
    torch.library.opcheck(ops.crop_resize_backward_boxes.default,
                          (grad, images, boxes, bi, "bilinear", True, "zeros", [2.0]))


def test_torch_compile_fullgraph(generator):
    images = random_images(4, 3, 32, 32, torch.float32, generator)
    actions = torch.rand(4, 2, generator=generator)

    def glance_and_focus(images, actions):
        whole = images.new_tensor([[0.0, 0.0, 32.0, 32.0]]).expand(4, 4)
        glance = gfkernels.crop_resize(images, whole, 12, mode="bicubic", align_corners=True)
        top_left = torch.floor(actions * (32 - 12))
        boxes = torch.cat([top_left.flip(1), top_left.flip(1) + 12], dim=1)
        return glance.mean() + gfkernels.crop_resize(images, boxes, 12).mean()

    compiled = torch.compile(glance_and_focus, fullgraph=True)
    torch.testing.assert_close(compiled(images, actions), glance_and_focus(images, actions))


def test_torch_compile_channels_last_output(generator):
    """Compiled, the channels_last crop keeps its layout (the fake kernel's strides) and
    values, and a convolution reads it as the eager one does."""
    images = random_images(4, 3, 32, 32, torch.uint8, generator)
    boxes = random_boxes(4, 32, 32, generator)
    conv = torch.nn.Conv2d(3, 5, 3).to(memory_format=torch.channels_last)

    def crop_and_convolve(images, boxes):
        patches = gfkernels.crop_resize(images, boxes, 12, mean=[0.5], std=[0.25],
                                        memory_format=torch.channels_last)
        return patches, conv(patches)

    compiled = torch.compile(crop_and_convolve, fullgraph=True)
    (patches, out), (expected, expected_out) = compiled(images, boxes), crop_and_convolve(
        images, boxes)
    assert patches.stride() == expected.stride() == channels_last_strides(expected.shape)
    torch.testing.assert_close(patches, expected, rtol=0, atol=0)
    torch.testing.assert_close(out, expected_out)


def test_torch_compile_backward(generator):
    images = random_images(2, 3, 16, 16, torch.float32, generator).requires_grad_()
    boxes = gradcheck_boxes(16, 16, generator, n=2).float().requires_grad_()

    def loss(images, boxes):
        return gfkernels.crop_resize(images, boxes, 8, mode="bilinear").square().sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    expected = torch.autograd.grad(loss(images, boxes), (images, boxes))
    actual = torch.autograd.grad(compiled(images, boxes), (images, boxes))
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e)


# ---------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------

GOOD = dict(images=torch.rand(2, 3, 8, 8), boxes=torch.tensor([[0.0, 0, 4, 4], [1, 1, 5, 5]]))


BAD_INPUTS = [
    ("images_rank", dict(images=torch.rand(3, 8, 8)), {}, ValueError, "images must be 4-D"),
    ("images_dtype", dict(images=torch.zeros(2, 3, 8, 8, dtype=torch.int32)), {}, TypeError,
     "images must be uint8"),
    ("images_empty", dict(images=torch.rand(2, 3, 0, 8)), {}, ValueError, "H > 0"),
    ("boxes_shape", dict(boxes=torch.zeros(2, 3)), {}, ValueError, "boxes must be (B, 4)"),
    ("boxes_dtype", dict(boxes=torch.zeros(2, 4, dtype=torch.long)), {}, TypeError,
     "boxes must be float32 or float64"),
    ("boxes_nan", dict(boxes=torch.tensor([[0.0, 0, 4, 4], [1, float("nan"), 5, 5]])), {},
     ValueError, "boxes must be finite"),
    ("boxes_inf", dict(boxes=torch.tensor([[0.0, 0, 4, float("inf")], [1, 1, 5, 5]])), {},
     ValueError, "boxes must be finite"),
    ("batch_size", dict(boxes=torch.zeros(3, 4)), {}, ValueError, "B == N"),
    ("batch_index_len", {}, dict(batch_index=torch.tensor([0, 1, 1])), ValueError,
     "batch_index must be (B,)"),
    ("batch_index_dtype", {}, dict(batch_index=torch.tensor([0, 1], dtype=torch.int32)),
     TypeError, "batch_index must be an int64"),
    ("batch_index_range", {}, dict(batch_index=torch.tensor([0, 2])), IndexError,
     "batch_index values must lie in [0, N)"),
    ("batch_index_negative", {}, dict(batch_index=torch.tensor([-1, 0])), IndexError,
     "batch_index values must lie in [0, N)"),
    ("size_zero", {}, dict(size=(0, 4)), ValueError, "size must be positive"),
    ("size_negative", {}, dict(size=-3), ValueError, "size must be positive"),
    ("mode", {}, dict(mode="area"), ValueError, "mode must be one of"),
    ("padding", {}, dict(padding_mode="reflect"), ValueError, "padding_mode must be one of"),
    ("nearest_align", {}, dict(mode="nearest", align_corners=True), ValueError,
     "align_corners=True is not defined for mode='nearest'"),
    ("mean_len", {}, dict(mean=[0.1, 0.2]), ValueError, "mean must hold 1 or C = 3"),
    ("mean_on_device", {}, dict(mean=torch.tensor([0.5], device="meta")), ValueError,
     "mean must be numbers or a CPU tensor"),
    ("std_zero", {}, dict(std=[1.0, 0.0, 1.0]), ValueError, "std must be non-zero"),
    ("out_dtype", {}, dict(out_dtype=torch.int64), TypeError, "out_dtype must be"),
    ("memory_format", {}, dict(memory_format=torch.preserve_format), ValueError,
     "memory_format must be torch.contiguous_format or torch.channels_last"),
    ("backend", {}, dict(backend="metal"), ValueError, "backend must be one of"),
    ("backend_cuda_on_cpu", {}, dict(backend="cuda"), ValueError,
     "backend='cuda' runs on CUDA tensors"),
]


@pytest.mark.parametrize("name,tensors,kwargs,error,message", BAD_INPUTS,
                         ids=[b[0] for b in BAD_INPUTS])
def test_bad_input(name, tensors, kwargs, error, message):
    args = {**GOOD, **tensors}
    kwargs = {"size": 4, **kwargs}
    size = kwargs.pop("size")
    with pytest.raises(error, match=re.escape(message)):
        gfkernels.crop_resize(args["images"], args["boxes"], size, **kwargs)


# The compiled op checks its inputs itself too, since it can be called directly.
RAW_BAD_INPUTS = [b for b in BAD_INPUTS if b[0] in {
    "images_rank", "images_dtype", "boxes_shape", "boxes_dtype", "boxes_nan", "batch_size",
    "batch_index_len", "batch_index_range", "batch_index_negative", "size_zero", "mode",
    "padding", "nearest_align", "mean_len", "std_zero", "out_dtype"}]


@pytest.mark.parametrize("name,tensors,kwargs,error,message", RAW_BAD_INPUTS,
                         ids=[b[0] for b in RAW_BAD_INPUTS])
def test_bad_input_raw_op(name, tensors, kwargs, error, message):
    args = {**GOOD, **tensors}
    kw = dict(batch_index=None, size=[4, 4], mode="bilinear", align_corners=False,
              padding_mode="border", mean=None, std=None, out_dtype=torch.float32)
    kw.update(kwargs)
    if isinstance(kw["size"], tuple):
        kw["size"] = list(kw["size"])
    message = message.replace("mode must be one of", "mode must be")
    message = message.replace("batch_index must be an int64", "batch_index must be int64")
    with pytest.raises(error, match=re.escape(message)):
        torch.ops.gfkernels.crop_resize(args["images"], args["boxes"], kw["batch_index"],
                                        kw["size"], kw["mode"], kw["align_corners"],
                                        kw["padding_mode"], kw["mean"], kw["std"],
                                        kw["out_dtype"])


# The backward ops check their arguments too, with the same exception types as the forward
# (and on every device: the checks are shared by the CPU and CUDA kernels).
def _backward_images_args(**change):
    args = dict(grad=torch.rand(2, 3, 4, 4), boxes=GOOD["boxes"], batch_index=None,
                image_size=[2, 3, 8, 8], image_dtype=torch.float32, mode="bilinear",
                align_corners=False, padding_mode="border", std=None)
    args.update(change)
    return list(args.values())


def _backward_boxes_args(**change):
    args = dict(grad=torch.rand(2, 3, 4, 4), images=GOOD["images"], boxes=GOOD["boxes"],
                batch_index=None, mode="bilinear", align_corners=False, padding_mode="border",
                std=None)
    args.update(change)
    return list(args.values())


RAW_BACKWARD_BAD_INPUTS = [
    ("images_size_len", "crop_resize_backward_images", _backward_images_args(image_size=[2, 3, 8]),
     ValueError, "image_size must be (N, C, H, W)"),
    ("images_size_empty", "crop_resize_backward_images",
     _backward_images_args(image_size=[2, 3, 0, 8]), ValueError, "H, W > 0"),
    ("images_dtype", "crop_resize_backward_images",
     _backward_images_args(image_dtype=torch.uint8), TypeError, "floating to have a gradient"),
    ("images_grad_rank", "crop_resize_backward_images",
     _backward_images_args(grad=torch.rand(3, 4, 4)), ValueError, "grad must be (B, C, h, w)"),
    ("images_grad_batch", "crop_resize_backward_images",
     _backward_images_args(grad=torch.rand(3, 3, 4, 4)), ValueError, "grad must hold B = 2"),
    ("images_boxes_dtype", "crop_resize_backward_images",
     _backward_images_args(boxes=torch.zeros(2, 4, dtype=torch.long)), TypeError,
     "boxes must be float32 or float64"),
    ("images_batch_index_range", "crop_resize_backward_images",
     _backward_images_args(batch_index=torch.tensor([0, 2])), IndexError,
     "batch_index values must lie in [0, N)"),
    ("images_mode", "crop_resize_backward_images", _backward_images_args(mode="area"),
     ValueError, "mode must be"),
    ("boxes_grad_rank", "crop_resize_backward_boxes",
     _backward_boxes_args(grad=torch.rand(2, 3, 4)), ValueError, "grad must be (B, C, h, w)"),
    ("boxes_grad_dtype", "crop_resize_backward_boxes",
     _backward_boxes_args(grad=torch.zeros(2, 3, 4, 4, dtype=torch.long)), TypeError,
     "grad must be floating"),
    ("boxes_std_zero", "crop_resize_backward_boxes", _backward_boxes_args(std=[0.0]),
     ValueError, "std must be non-zero"),
    ("forward_size_len", "crop_resize",
     [GOOD["images"], GOOD["boxes"], None, [4, 4, 4], "bilinear", False, "border", None, None,
      torch.float32], ValueError, "size must be (h, w)"),
]


@pytest.mark.parametrize("name,op,args,error,message", RAW_BACKWARD_BAD_INPUTS,
                         ids=[b[0] for b in RAW_BACKWARD_BAD_INPUTS])
def test_bad_input_raw_backward_ops(name, op, args, error, message):
    with pytest.raises(error, match=re.escape(message)):
        getattr(torch.ops.gfkernels, op)(*args)
