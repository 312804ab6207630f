"""crop_resize on the GPU: the CUDA kernels and the Triton kernels against the reference and
against the CPU kernel, gradcheck, the deterministic backward (bit-identical over runs),
opcheck and torch.compile. Skipped where no CUDA GPU is visible."""

from __future__ import annotations


import pytest
import torch

import gfkernels
from gfkernels import backends, reference

from tests.helpers import (GRADCHECK_BOXES, IMAGE_DTYPES, assert_close_to_reference, deterministic_algorithms,
                           mode_options, random_boxes, random_images, triton_on_gpu)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible)"),
]

OUT_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


BACKENDS = [
    pytest.param("cuda", marks=pytest.mark.skipif(
        not backends.compiled_with_cuda(), reason="gfkernels._C was built without CUDA kernels")),
    pytest.param("triton", marks=pytest.mark.skipif(
        not triton_on_gpu(), reason="triton missing, or TRITON_INTERPRET=1 (CPU only)")),
]


MODE_OPTIONS = list(mode_options())


def gpu(x):
    return x.cuda() if isinstance(x, torch.Tensor) else x


def run(backend, images, boxes, size, **kwargs):
    kwargs = {k: gpu(v) for k, v in kwargs.items()}
    return gfkernels.crop_resize(gpu(images), gpu(boxes), size, backend=backend, **kwargs)


# ---------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------


def assert_close_on_gpu(actual, expected, out_dtype):
    """assert_close_to_reference with room for the GPU's fused multiply-adds in float64: nvcc
    and Triton contract a multiply and an add into one FMA (one rounding where the C++ kernel
    and the reference round twice), so bicubic's 16-tap sums differ from the reference by up to
    ~15 ulps of the output's scale (14 seen on an H200, against the 8 the CPU meets). Narrower
    outputs round that difference away: they keep the CPU's 8 ulps."""
    assert_close_to_reference(actual, expected, out_dtype,
                              ulps=32 if out_dtype == torch.float64 else 8)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", IMAGE_DTYPES, ids=str)
@pytest.mark.parametrize("mode,align_corners,padding_mode", MODE_OPTIONS)
def test_forward_matches_reference_and_cpu(backend, mode, align_corners, padding_mode, dtype,
                                           generator):
    for trial in range(3):
        N, C = int(torch.randint(1, 4, (1,), generator=generator)), [1, 3, 4][trial]
        H, W = [int(v) for v in torch.randint(5, 60, (2,), generator=generator)]
        h, w = [int(v) for v in torch.randint(1, 40, (2,), generator=generator)]
        B = int(torch.randint(1, 17, (1,), generator=generator))
        layout = ["contiguous", "channels_last", "strided"][trial]
        images = random_images(N, C, H, W, dtype, generator, layout)
        boxes = random_boxes(B, H, W, generator, dtype=[torch.float32, torch.float64][trial % 2])
        kwargs = dict(batch_index=torch.randint(0, N, (B,), generator=generator), mode=mode,
                      align_corners=align_corners, padding_mode=padding_mode)
        if trial == 2:
            kwargs.update(mean=torch.rand(C, generator=generator).tolist(),
                          std=(0.2 + torch.rand(C, generator=generator)).tolist())
        out = run(backend, images, boxes, (h, w), **kwargs)
        assert out.is_cuda and out.is_contiguous()
        expected = reference.crop_resize(images, boxes, (h, w), **kwargs)
        out_dtype = dtype if dtype.is_floating_point else torch.float32
        assert_close_on_gpu(out.cpu(), expected, out_dtype)
        cpu = gfkernels.crop_resize(images, boxes, (h, w), backend="cpp", **kwargs)
        assert_close_on_gpu(out.cpu(), cpu, out_dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("out_dtype", OUT_DTYPES, ids=str)
@pytest.mark.parametrize("in_dtype", IMAGE_DTYPES, ids=str)
def test_out_dtype(backend, in_dtype, out_dtype, generator):
    images = random_images(2, 3, 37, 41, in_dtype, generator)
    boxes = random_boxes(9, 37, 41, generator)
    kwargs = dict(batch_index=torch.randint(0, 2, (9,), generator=generator), mode="bicubic",
                  out_dtype=out_dtype, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    out = run(backend, images, boxes, (13, 17), **kwargs)
    assert out.dtype == out_dtype
    assert_close_on_gpu(out.cpu(), reference.crop_resize(images, boxes, (13, 17), **kwargs), out_dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_focus_crop_is_a_copy(backend, generator):
    """GFNet's focus boxes (integer P x P) take the copy path: bit-identical to slicing."""
    images = random_images(16, 3, 64, 64, torch.float32, generator, "channels_last").cuda()
    actions = torch.rand(16, 2, generator=generator).cuda()
    boxes = reference.focus_boxes(actions, 64, 24)
    out = gfkernels.crop_resize(images, boxes, 24, backend=backend)
    assert torch.equal(out, reference.per_sample_crop(images, actions, 24))


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_channels_many_boxes_and_empty(backend, generator):
    """C > 64 (the affine table leaves the kernel arguments), B > 65535 (grid-stride over
    boxes), and B = 0."""
    images = random_images(2, 70, 9, 8, torch.float32, generator)
    boxes = random_boxes(5, 9, 8, generator)
    kwargs = dict(batch_index=torch.tensor([0, 1, 1, 0, 1]), mode="bilinear",
                  mean=torch.rand(70, generator=generator).tolist(),
                  std=(0.5 + torch.rand(70, generator=generator)).tolist())
    out = run(backend, images, boxes, (3, 4), **kwargs)
    assert_close_to_reference(out.cpu(), reference.crop_resize(images, boxes, (3, 4), **kwargs),
                              torch.float32)

    small = random_images(3, 1, 5, 6, torch.float32, generator)
    many = random_boxes(70000, 5, 6, generator)
    bi = torch.randint(0, 3, (70000,), generator=generator)
    out = run(backend, small, many, (2, 2), batch_index=bi)
    expected = reference.crop_resize(small, many, (2, 2), batch_index=bi)
    assert_close_to_reference(out.cpu(), expected, torch.float32)

    empty = run(backend, small, torch.zeros(0, 4), 3, batch_index=torch.zeros(0, dtype=torch.long))
    assert empty.shape == (0, 1, 3, 3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.uint8], ids=str)
@pytest.mark.parametrize("layout,out_layout", [("contiguous", "contiguous"),
                                               ("channels_last", "contiguous"),
                                               ("contiguous", "channels_last"),
                                               ("channels_last", "channels_last")])
def test_copy_path_every_alignment(backend, dtype, layout, out_layout, generator):
    """Integer boxes of the output's size at every column offset and width: the copy path's
    vector loads and stores (taken only where aligned, and only into contiguous output rows)
    give the exact pixels, in both output layouts."""
    images = random_images(2, 3, 20, 24, dtype, generator, layout).cuda()
    memory_format = getattr(torch, out_layout if out_layout == "channels_last"
                            else "contiguous_format")
    for w in range(1, 10):
        boxes = torch.tensor([[float(x), 3.0, float(x + w), 8.0] for x in range(8)],
                             device="cuda")
        bi = torch.tensor([x % 2 for x in range(8)], device="cuda")
        out = gfkernels.crop_resize(images, boxes, (5, w), batch_index=bi, backend=backend,
                                    memory_format=memory_format)
        assert out.stride() == torch.empty(out.shape, memory_format=memory_format).stride()
        expected = torch.stack([images[x % 2, :, 3:8, x:x + w] for x in range(8)])
        if dtype == torch.uint8:
            expected = expected.float() / 255
        torch.testing.assert_close(out, expected, rtol=0, atol=0 if dtype.is_floating_point
                                   else 1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
def test_every_width_and_channel_count(backend, mode, generator):
    """Output widths 1..9 (groups of pixels cut at the row's end, scalar and vector stores)
    and C = 1, 3, 5, 9 (channels loaded in chunks), both output layouts, against the
    reference."""
    for C in (1, 3, 5, 9):
        images = random_images(2, C, 17, 19, torch.float32, generator)
        boxes = random_boxes(3, 17, 19, generator)
        bi = torch.tensor([1, 0, 1])
        for w in range(1, 10):
            for memory_format in (torch.contiguous_format, torch.channels_last):
                out = run(backend, images, boxes, (3, w), batch_index=bi, mode=mode,
                          mean=[0.25] * C, std=[0.5] * C, memory_format=memory_format)
                expected = reference.crop_resize(images, boxes, (3, w), batch_index=bi,
                                                 mode=mode, mean=[0.25] * C, std=[0.5] * C,
                                                 memory_format=memory_format)
                assert out.stride() == expected.stride(), (out.stride(), memory_format)
                assert_close_to_reference(out.cpu(), expected, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("box_dtype", [torch.float32, torch.float64], ids=str)
def test_boxes_and_batch_index_of_any_strides(backend, box_dtype, generator):
    """Boxes and batch_index are read in place with their dtype and strides."""
    images = random_images(3, 3, 16, 18, torch.float32, generator)
    dense = random_boxes(6, 16, 18, generator, dtype=box_dtype)
    wide = torch.zeros(6, 8, dtype=box_dtype, device="cuda")  # views made on the GPU:
    wide[:, ::2] = dense.cuda()                                 # .cuda() would densify them
    boxes = wide[:, ::2]
    long_index = torch.tensor([2, 0, 1, 1, 0, 2, 1, 0, 2, 2, 1, 0], device="cuda")
    bi = long_index[::2]
    assert not boxes.is_contiguous() and not bi.is_contiguous()
    out = gfkernels.crop_resize(images.cuda(), boxes, (5, 7), batch_index=bi, mode="bicubic",
                                backend=backend)
    expected = reference.crop_resize(images, dense, (5, 7), batch_index=bi.cpu(),
                                     mode="bicubic")
    assert_close_to_reference(out.cpu(), expected, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_is_one_launch(backend, generator):
    """No conversion of the boxes, no copy of the normalisation table: one kernel a call."""
    from torch.profiler import ProfilerActivity, profile

    images = random_images(4, 3, 32, 32, torch.uint8, generator).cuda()
    boxes = random_boxes(4, 32, 32, generator).cuda()  # float32
    kwargs = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], backend=backend)
    gfkernels.crop_resize(images, boxes, 16, **kwargs)  # warm-up (Triton compiles)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        gfkernels.crop_resize(images, boxes, 16, **kwargs)
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
    assert len(kernels) == 1, [e.name for e in kernels]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("backend", BACKENDS)
def test_tensors_on_another_device(backend, generator):
    """Tensors on cuda:1 while cuda:0 is current: the kernels run on cuda:1's stream."""
    images = random_images(2, 3, 20, 20, torch.float32, generator)
    boxes = random_boxes(2, 20, 20, generator)
    expected = reference.crop_resize(images, boxes, 8, mode="bicubic")
    with torch.cuda.device(0):
        out = gfkernels.crop_resize(images.to("cuda:1"), boxes.to("cuda:1"), 8, mode="bicubic",
                                    backend=backend)
        torch.cuda.synchronize(1)
    assert out.device == torch.device("cuda:1")
    assert_close_to_reference(out.cpu(), expected, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_and_huge_boxes_stay_in_bounds(backend):
    """The GPU backends do not sync to check box values: NaN and huge boxes are clamped in
    the kernels and read nothing out of bounds."""
    images = torch.rand(1, 3, 10, 10, device="cuda")
    boxes = torch.tensor([[float("nan"), 0.0, 5.0, 5.0], [-1e30, -1e30, 1e30, 1e30],
                          [0.0, float("inf"), 3.0, 4.0]], device="cuda")
    out = gfkernels.crop_resize(images, boxes, 6, batch_index=torch.zeros(3, dtype=torch.long,
                                                                          device="cuda"),
                                mode="bicubic", backend=backend)
    torch.cuda.synchronize()
    assert out.shape == (3, 3, 6, 6) and torch.isfinite(out).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_side_stream(backend, generator):
    images = random_images(4, 3, 32, 32, torch.float32, generator).cuda()
    boxes = random_boxes(4, 32, 32, generator).cuda()
    expected = gfkernels.crop_resize(images, boxes, 16, backend=backend)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = gfkernels.crop_resize(images, boxes, 16, backend=backend)
    torch.cuda.current_stream().wait_stream(stream)
    assert torch.equal(out, expected)


# ---------------------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------------------


def grads_of(fn, images, boxes, grad):
    x = images.detach().clone().requires_grad_()
    b = boxes.detach().clone().requires_grad_()
    out = fn(x, b)
    gi, gb = torch.autograd.grad(out, (x, b), grad, allow_unused=True)
    return (torch.zeros_like(x) if gi is None else gi), (torch.zeros_like(b) if gb is None else gb)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode,align_corners,padding_mode", MODE_OPTIONS)
def test_backward_matches_reference(backend, mode, align_corners, padding_mode, generator):
    images = random_images(3, 3, 23, 19, torch.float64, generator, "channels_last")
    boxes = random_boxes(11, 23, 19, generator, dtype=torch.float64)
    bi = torch.randint(0, 3, (11,), generator=generator)
    kwargs = dict(batch_index=bi, mode=mode, align_corners=align_corners,
                  padding_mode=padding_mode, std=[0.5, 1.0, 2.0])
    grad = torch.randn(11, 3, 7, 9, generator=generator, dtype=torch.float64)
    ei, eb = grads_of(lambda x, b: reference.crop_resize(x, b, (7, 9), **kwargs), images, boxes,
                      grad)
    gkw = {k: gpu(v) for k, v in kwargs.items()}
    gi, gb = grads_of(lambda x, b: gfkernels.crop_resize(x, b, (7, 9), backend=backend, **gkw),
                      images.cuda(), boxes.cuda(), grad.cuda())
    torch.testing.assert_close(gi.cpu(), ei, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gb.cpu(), eb, rtol=1e-7, atol=1e-7)
    ci, cb = grads_of(lambda x, b: gfkernels.crop_resize(x, b, (7, 9), backend="cpp", **kwargs),
                      images, boxes, grad)
    torch.testing.assert_close(gi.cpu(), ci, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gb.cpu(), cb, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_backward_low_precision(backend, dtype, generator):
    images = random_images(2, 3, 30, 30, dtype, generator)
    boxes = random_boxes(8, 30, 30, generator, kind="inside")
    bi = torch.randint(0, 2, (8,), generator=generator)
    grad = torch.randn(8, 3, 12, 12, generator=generator).to(dtype)
    ei, eb = grads_of(lambda x, b: reference.crop_resize(x, b, 12, batch_index=bi), images, boxes,
                      grad)
    gi, gb = grads_of(lambda x, b: gfkernels.crop_resize(x, b, 12, batch_index=bi.cuda(),
                                                         backend=backend),
                      images.cuda(), boxes.cuda(), grad.cuda())
    assert gi.dtype == dtype and gb.dtype == torch.float32
    tol = {torch.float16: 2e-2, torch.bfloat16: 1e-1, torch.float32: 1e-4}[dtype]
    torch.testing.assert_close(gi.cpu().double(), ei.double(), rtol=tol, atol=tol)
    scale = float(eb.abs().max()) + 1.0
    torch.testing.assert_close(gb.cpu().double(), eb.double(), rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_gradcheck(backend, mode):
    images = torch.rand(2, 2, 8, 9, dtype=torch.float64, device="cuda", requires_grad=True)
    # Fractional boxes whose sample positions stay clear of integers (the kinks of the taps;
    # tests/test_crop_resize.py checks that, and that the C++ kernels pass on them).
    boxes = torch.tensor(GRADCHECK_BOXES, dtype=torch.float64, device="cuda", requires_grad=True)
    bi = torch.tensor([1, 0, 1], device="cuda")

    def fn(x, b):
        return gfkernels.crop_resize(x, b, (3, 4), batch_index=bi, mode=mode, std=[0.5, 2.0],
                                     padding_mode="zeros", backend=backend)

    assert torch.autograd.gradcheck(fn, (images, boxes), eps=1e-6, atol=1e-5, rtol=1e-4,
                                    nondet_tol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_batch_index", [True, False])
def test_deterministic_backward_bit_identical(backend, with_batch_index, generator):
    """With deterministic algorithms, repeated backwards are bit-identical (many overlapping
    boxes per image, float32), and equal the atomic backward up to rounding."""
    N, B = (2, 96) if with_batch_index else (6, 6)
    images = random_images(N, 3, 40, 36, torch.float32, generator).cuda()
    boxes = random_boxes(B, 40, 36, generator).cuda()
    kwargs = dict(mode="bicubic", padding_mode="border")
    if with_batch_index:
        kwargs["batch_index"] = torch.randint(0, N, (B,), generator=generator).cuda()
    grad = torch.randn(B, 3, 17, 15, generator=generator).cuda()

    def backward():
        return grads_of(lambda x, b: gfkernels.crop_resize(x, b, (17, 15), backend=backend,
                                                           **kwargs), images, boxes, grad)

    atomic_i, atomic_b = backward()
    with deterministic_algorithms():
        runs = [backward() for _ in range(3)]
    for gi, gb in runs[1:]:
        assert torch.equal(gi, runs[0][0]) and torch.equal(gb, runs[0][1])
    torch.testing.assert_close(runs[0][0], atomic_i, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(runs[0][1], atomic_b, rtol=1e-4, atol=1e-3)


# ---------------------------------------------------------------------------------------
# torch.library integration
# ---------------------------------------------------------------------------------------


def _opcheck_samples():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 12, 13, dtype=torch.float64, generator=g).cuda()
    boxes = random_boxes(4, 12, 13, g, kind="inside", dtype=torch.float64).cuda()
    bi = torch.tensor([0, 1, 1, 0], device="cuda")
    yield (images.requires_grad_(), boxes.requires_grad_(), bi, [5, 6], "bicubic", True,
           "zeros", [0.1, 0.2, 0.3], [0.5, 0.6, 0.7], torch.float64)
    u8 = torch.randint(0, 256, (2, 3, 12, 13), dtype=torch.uint8, generator=g).cuda()
    yield (u8, boxes.detach().float(), None, [4, 4], "bilinear", False, "border", None, None,
           torch.float16)
    # written straight into channels_last: the fake kernel's strides must be the kernel's
    yield (images.detach().clone().requires_grad_(), boxes.detach().clone().requires_grad_(),
           bi, [5, 6], "bilinear", False, "border", None, [0.5], torch.float64, True)
    yield (u8, boxes.detach().float(), None, [4, 7], "bicubic", False, "zeros", [0.4], [0.3],
           torch.bfloat16, True)


@pytest.mark.skipif(not backends.compiled_with_cuda(), reason="built without CUDA kernels")
def test_opcheck_cuda():
    for args in _opcheck_samples():
        torch.library.opcheck(torch.ops.gfkernels.crop_resize.default, args)
    images, boxes, bi = next(iter(_opcheck_samples()))[:3]
    grad = torch.randn(4, 3, 5, 6, dtype=torch.float64, device="cuda")
    torch.library.opcheck(torch.ops.gfkernels.crop_resize_backward_images.default,
                          (grad, boxes.detach(), bi, list(images.shape), images.dtype, "bicubic",
                           True, "zeros", [0.5, 0.6, 0.7]))
    torch.library.opcheck(torch.ops.gfkernels.crop_resize_backward_boxes.default,
                          (grad, images.detach(), boxes.detach(), bi, "bicubic", True, "zeros",
                           [0.5, 0.6, 0.7]))


@pytest.mark.skipif(not triton_on_gpu(), reason="triton unavailable on the GPU")
def test_opcheck_triton():
    ops = backends.TABLE["triton"].ops
    for args in _opcheck_samples():
        torch.library.opcheck(ops.crop_resize.default, args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile(backend, generator):
    """fullgraph compile of a glance + focus step, forward and backward, equals eager."""
    torch._dynamo.reset()
    images = random_images(4, 3, 48, 48, torch.float32, generator).cuda().requires_grad_()
    actions = torch.rand(4, 2, generator=generator).cuda()
    active = torch.tensor([0, 2, 3], device="cuda")

    def step(images, actions, active):
        full = torch.tensor([[0.0, 0.0, 48.0, 48.0]], device=images.device).expand(4, 4)
        glance = gfkernels.crop_resize(images, full, 16, mode="bicubic", align_corners=True,
                                       backend=backend)
        boxes = reference.focus_boxes(actions[active], 48, 24)
        focus = gfkernels.crop_resize(images, boxes, 24, batch_index=active,
                                      mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25],
                                      backend=backend)
        return glance.square().sum() + focus.sum()

    compiled = torch.compile(step, fullgraph=True)
    eager_loss = step(images, actions, active)
    (eager_grad,) = torch.autograd.grad(eager_loss, images)
    loss = compiled(images, actions, active)
    (grad,) = torch.autograd.grad(loss, images)
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad, eager_grad, rtol=1e-5, atol=1e-5)
