"""crop_resize with backend="triton" against gfkernels.reference.

Runs on CPU tensors under TRITON_INTERPRET=1 (how CI tests the Triton kernels), or on a GPU.
The interpreter is slow, so the cases are small and each test covers several options at once
(every mode, both align_corners, both paddings, every dtype, layouts, batch_index, mean/std,
both backwards, the deterministic backward)."""

from __future__ import annotations

import pytest
import torch

import gfkernels
from gfkernels import reference
from gfkernels.triton import interpreting

from tests.helpers import (IMAGE_DTYPES, MODES, assert_close_to_reference,
                           deterministic_algorithms, mode_options, random_boxes, random_images)

triton = pytest.importorskip("triton", reason="triton is not installed")

INTERPRET = interpreting()
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip("Triton kernels need a CUDA GPU or TRITON_INTERPRET=1 (CPU interpreter)",
                allow_module_level=True)

DEVICE = "cpu" if INTERPRET else "cuda"


MODE_OPTIONS = list(mode_options())


def triton_crop(images, boxes, size, **kwargs):
    return gfkernels.crop_resize(images.to(DEVICE), boxes.to(DEVICE), size, backend="triton",
                                 **{k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v)
                                    for k, v in kwargs.items()})


@pytest.mark.parametrize("case", range(len(MODE_OPTIONS)))
def test_forward_matches_reference(case, generator):
    """Every mode/align_corners/padding; dtype, layout, size, box dtype and mean/std rotate."""
    mode, align_corners, padding_mode = MODE_OPTIONS[case]
    dtype = IMAGE_DTYPES[case % len(IMAGE_DTYPES)]
    layout = ["contiguous", "channels_last", "strided"][case % 3]
    N, C = 2, [1, 3, 4][case % 3]
    H, W = [int(v) for v in torch.randint(5, 24, (2,), generator=generator)]
    h, w = [int(v) for v in torch.randint(1, 12, (2,), generator=generator)]
    images = random_images(N, C, H, W, dtype, generator, layout)
    boxes = random_boxes(3, H, W, generator, dtype=[torch.float32, torch.float64][case % 2])
    kwargs = dict(batch_index=torch.randint(0, N, (3,), generator=generator), mode=mode,
                  align_corners=align_corners, padding_mode=padding_mode)
    if case % 2 == 0:
        kwargs.update(mean=torch.rand(C, generator=generator).tolist(),
                      std=(0.2 + torch.rand(C, generator=generator)).tolist())
    out = triton_crop(images, boxes, (h, w), **kwargs)
    expected = reference.crop_resize(images, boxes, (h, w), **kwargs)
    out_dtype = dtype if dtype.is_floating_point else torch.float32
    assert out.is_contiguous() and out.device.type == DEVICE
    assert_close_to_reference(out.cpu(), expected, out_dtype)


@pytest.mark.parametrize("in_dtype,out_dtype", [
    (torch.uint8, torch.float16), (torch.uint8, torch.bfloat16), (torch.float16, torch.float32),
    (torch.float32, torch.float64), (torch.float64, torch.float16)], ids=str)
def test_out_dtype(in_dtype, out_dtype, generator):
    images = random_images(2, 3, 11, 13, in_dtype, generator)
    boxes = random_boxes(2, 11, 13, generator)
    kwargs = dict(batch_index=torch.tensor([1, 0]), mode="bicubic", out_dtype=out_dtype,
                  mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    out = triton_crop(images, boxes, (5, 6), **kwargs)
    assert_close_to_reference(out.cpu(), reference.crop_resize(images, boxes, (5, 6), **kwargs),
                              out_dtype)


def test_exact_integer_copy_and_whole_image(generator):
    """Integer boxes of the output's size are copies (fast path); a box that leaves the image
    is not, and takes the general path; the whole-image box equals F.interpolate."""
    boxes = torch.tensor([[2.0, 3.0, 8.0, 8.0], [-2.0, 1.0, 4.0, 6.0], [8.0, 7.0, 14.0, 12.0]])
    bi = torch.tensor([1, 0, 0])
    for mode, dtype in zip(MODES, [torch.uint8, torch.bfloat16, torch.float32]):
        images = random_images(2, 3, 12, 14, dtype, generator, "channels_last")
        out = triton_crop(images, boxes, (5, 6), batch_index=bi, mode=mode).cpu()
        expected = reference.crop_resize(images, boxes, (5, 6), batch_index=bi, mode=mode)
        out_dtype = expected.dtype
        assert_close_to_reference(out, expected, out_dtype)
        if dtype.is_floating_point:  # a copy, bit for bit
            assert torch.equal(out[0], images[1, :, 3:8, 2:8])
            assert torch.equal(out[2], images[0, :, 7:12, 8:14])
    whole = random_images(2, 2, 9, 10, torch.float64, generator)
    full = torch.tensor([[0.0, 0.0, 10.0, 9.0]] * 2, dtype=torch.float64)
    out = triton_crop(whole, full, (5, 13), mode="bicubic", align_corners=True).cpu()
    expected = torch.nn.functional.interpolate(whole, (5, 13), mode="bicubic", align_corners=True)
    torch.testing.assert_close(out, expected)


def test_bad_boxes_read_nothing_out_of_bounds(generator):
    """NaN and huge boxes are clamped inside the kernels (on CPU tensors, under the
    interpreter, NaN is refused as on every CPU backend; on a GPU it is not checked, which
    would be a sync): results are finite, shapes right."""
    images = random_images(1, 2, 6, 7, torch.float32, generator)
    boxes = torch.tensor([[float("nan"), 0.0, 3.0, 3.0], [-1e30, -1e30, 1e30, 1e30]])
    if torch.device(DEVICE).type == "cpu":
        with pytest.raises(ValueError, match="boxes must be finite"):
            triton_crop(images, boxes, 4, batch_index=torch.tensor([0, 0]))
        boxes[0, 0] = 1e30  # finite, and far out
    out = triton_crop(images, boxes, 4, batch_index=torch.tensor([0, 0]), mode="bicubic",
                      padding_mode="zeros")
    assert out.shape == (2, 2, 4, 4) and torch.isfinite(out).all()


BACKWARD_CASES = [("bilinear", False, "border"), ("bilinear", True, "zeros"),
                  ("bicubic", False, "zeros"), ("bicubic", True, "border"),
                  ("nearest", False, "border"), ("nearest", False, "zeros")]


def _reference_grads(images, boxes, grad, size, **kwargs):
    x = images.detach().clone().requires_grad_(images.is_floating_point())
    b = boxes.detach().clone().requires_grad_()
    out = reference.crop_resize(x, b, size, **kwargs)
    inputs = (x, b) if x.requires_grad else (b,)
    grads = torch.autograd.grad(out, inputs, grad, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs)]
    return grads if x.requires_grad else [None] + grads


def _triton_grads(images, boxes, grad, size, **kwargs):
    x = images.detach().to(DEVICE).requires_grad_(images.is_floating_point())
    b = boxes.detach().to(DEVICE).requires_grad_()
    out = triton_crop(x, b, size, **kwargs)
    inputs = (x, b) if x.requires_grad else (b,)
    grads = [g.cpu() for g in torch.autograd.grad(out, inputs, grad.to(DEVICE))]
    return grads if x.requires_grad else [None] + grads


@pytest.mark.parametrize("mode,align_corners,padding_mode", BACKWARD_CASES)
def test_backward_matches_reference(mode, align_corners, padding_mode, generator):
    """Gradients wrt images (atomics) and boxes against the reference's autograd, float64."""
    images = random_images(2, 2, 9, 11, torch.float64, generator, "channels_last")
    boxes = random_boxes(3, 9, 11, generator, kind="inside", dtype=torch.float64)
    boxes[1] = torch.tensor([-2.5, 3.25, 6.75, 12.5])  # partly off-image
    kwargs = dict(batch_index=torch.tensor([1, 0, 1]), mode=mode, align_corners=align_corners,
                  padding_mode=padding_mode, std=[0.5, 2.0])
    grad = torch.randn(3, 2, 4, 5, generator=generator, dtype=torch.float64)
    gi, gb = _triton_grads(images, boxes, grad, (4, 5), **kwargs)
    ei, eb = _reference_grads(images, boxes, grad, (4, 5), **kwargs)
    torch.testing.assert_close(gi, ei, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gb, eb, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.uint8],
                         ids=str)
def test_backward_low_precision(dtype, generator):
    images = random_images(1, 3, 8, 9, dtype, generator)
    boxes = torch.tensor([[0.5, 1.25, 7.5, 6.0], [2.0, 0.0, 9.0, 5.0]], dtype=torch.float32)
    kwargs = dict(batch_index=torch.tensor([0, 0]), mode="bilinear")
    grad = torch.randn(2, 3, 4, 4, generator=generator).to(
        dtype if dtype.is_floating_point else torch.float32)
    gi, gb = _triton_grads(images, boxes, grad, 4, **kwargs)
    ei, eb = _reference_grads(images, boxes, grad, 4, **kwargs)
    tol = {torch.float16: 1e-2, torch.bfloat16: 5e-2, torch.float32: 1e-5, torch.uint8: 1e-5}[dtype]
    if dtype.is_floating_point:
        assert gi.dtype == dtype
        torch.testing.assert_close(gi.double(), ei.double(), rtol=tol, atol=tol)
    else:
        assert gi is None
    torch.testing.assert_close(gb.double(), eb.double(), rtol=tol * 10, atol=tol * 10)


@pytest.mark.parametrize("with_batch_index", [True, False])
def test_deterministic_backward(with_batch_index, generator):
    """torch.use_deterministic_algorithms(True): the gather kernel, against the reference and
    bit-identical over repeated runs."""
    N = 3
    images = random_images(N, 2, 7, 9, torch.float64, generator)
    boxes = random_boxes(N, 7, 9, generator, dtype=torch.float64)
    boxes[0] = torch.tensor([-20.0, 1.0, -5.0, 6.0])  # wholly off-image: all taps clamp
    kwargs = dict(mode="bicubic", padding_mode="border")
    if with_batch_index:
        kwargs["batch_index"] = torch.tensor([2, 0, 2])
    grad = torch.randn(N, 2, 3, 4, generator=generator, dtype=torch.float64)
    with deterministic_algorithms():
        first, _ = _triton_grads(images, boxes, grad, (3, 4), **kwargs)
        again, _ = _triton_grads(images, boxes, grad, (3, 4), **kwargs)
    expected, _ = _reference_grads(images, boxes, grad, (3, 4), **kwargs)
    assert torch.equal(first, again)
    torch.testing.assert_close(first, expected, rtol=1e-10, atol=1e-10)


def test_matches_cpu_kernel(generator):
    """The Triton and C++ backends agree (float32, many boxes per image)."""
    images = random_images(2, 3, 15, 13, torch.float32, generator)
    boxes = random_boxes(6, 15, 13, generator)
    kwargs = dict(batch_index=torch.tensor([0, 1, 1, 0, 1, 0]), mode="bicubic")
    out = triton_crop(images, boxes, (4, 5), **kwargs).cpu()
    cpu = gfkernels.crop_resize(images, boxes, (4, 5), backend="cpp", **kwargs)
    torch.testing.assert_close(out, cpu, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------
# Launch shapes, bounds and host work (checked without running the kernels where possible)
# ---------------------------------------------------------------------------------------

CUDA_GRID_LIMITS = (2**31 - 1, 65535, 65535)


@pytest.fixture
def launches(monkeypatch):
    """Records (kernel name, grid, arguments) of every interpreted launch instead of running it:
    for checks of what the host code asks of the GPU, at sizes the interpreter could not run."""
    if not INTERPRET:
        pytest.skip("inspects interpreted launches (TRITON_INTERPRET=1)")
    from triton.runtime.interpreter import InterpretedFunction

    seen = []

    def record(self, *args, grid, warmup, **kwargs):
        seen.append((self.fn.__name__, tuple(grid), args))

    monkeypatch.setattr(InterpretedFunction, "run", record)
    return seen


def triton_ops():
    return gfkernels.backends.TABLE["triton"].ops


def test_many_boxes_fit_the_grid(launches):
    """More than 65535 boxes: every launch (forward, both image backwards, box backward) keeps
    the box count off the grid's y and z axes, which stop at 65535."""
    B = 70_000
    images = torch.rand(2, 1, 6, 5, dtype=torch.float64)
    boxes = torch.rand(B, 4, dtype=torch.float64) * 4
    bi = torch.randint(0, 2, (B,))
    grad = torch.zeros(B, 1, 1, 1, dtype=torch.float64)
    ops = triton_ops()
    ops.crop_resize(images, boxes, bi, [1, 1], "bilinear", False, "border", None, None,
                    torch.float64)
    ops.crop_resize_backward_images(grad, boxes, bi, [2, 1, 6, 5], torch.float64, "bicubic",
                                    False, "border", None)
    with deterministic_algorithms():
        ops.crop_resize_backward_images(grad, boxes, bi, [2, 1, 6, 5], torch.float64, "bicubic",
                                        False, "border", None)
    ops.crop_resize_backward_boxes(grad, images, boxes, bi, "bilinear", False, "border", None)
    kernels = {name for name, _, _ in launches}
    assert {"_forward_kernel", "_backward_images_atomic_kernel", "_axis_range_kernel",
            "_backward_images_gather_kernel", "_backward_boxes_kernel"} <= kernels
    for name, grid, _ in launches:
        assert all(g <= limit for g, limit in zip(grid, CUDA_GRID_LIMITS)), (name, grid)


def test_one_launch_and_no_table_per_call(launches):
    """A forward is one launch, with the boxes as given (no float64 copy) and the same device
    normalisation table every call (no host-to-device copy, which would sync the host)."""
    images = torch.rand(2, 3, 10, 12)
    boxes = torch.tensor([[0.5, 1.0, 8.0, 9.5], [2.0, 2.0, 10.0, 8.0]])  # float32
    kwargs = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], backend="triton")
    gfkernels.crop_resize(images, boxes, 4, **kwargs)
    gfkernels.crop_resize(images, boxes, 4, **kwargs)
    assert [name for name, _, _ in launches] == ["_forward_kernel", "_forward_kernel"]
    (_, _, first), (_, _, second) = launches
    assert first[1] is boxes and second[1] is boxes
    tables = [a for a in first if isinstance(a, torch.Tensor) and a.dtype == torch.float64]
    again = [a for a in second if isinstance(a, torch.Tensor) and a.dtype == torch.float64]
    assert len(tables) == len(again) == 1 and tables[0] is again[0]


def test_empty_image_batch_is_refused():
    """Boxes with no image to read: an IndexError (as from the C++ ops), never a launch that
    would clamp batch_index into [0, -1]."""
    images = torch.rand(0, 3, 8, 8, device=DEVICE)
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0]], device=DEVICE)
    bi = torch.zeros(1, dtype=torch.long, device=DEVICE)
    with pytest.raises(IndexError, match=r"batch_index values must lie in \[0, "):
        gfkernels.crop_resize(images, boxes, 4, batch_index=bi, backend="triton")
    ops = triton_ops()
    with pytest.raises(IndexError, match="N = 0 images"):
        ops.crop_resize(images, boxes, bi, [4, 4], "bilinear", False, "border", None, None,
                        torch.float32)
    with pytest.raises(IndexError, match="N = 0 images"):
        ops.crop_resize_backward_boxes(torch.zeros(1, 3, 4, 4, device=DEVICE), images, boxes,
                                       bi, "bilinear", False, "border", None)


def test_out_of_range_batch_index_same_in_both_backwards(generator):
    """The op called directly (no value checks) with batch_index values out of range: the
    atomic and the deterministic backward treat them alike (clamped to the nearest image, as
    the forward reads them), where the deterministic one used to drop them."""
    images = random_images(3, 2, 7, 8, torch.float64, generator)
    boxes = random_boxes(4, 7, 8, generator, kind="inside", dtype=torch.float64)
    bad = torch.tensor([0, 3, -2, 5])
    grad = torch.randn(4, 2, 3, 4, generator=generator, dtype=torch.float64)
    ops = triton_ops()
    args = (grad.to(DEVICE), boxes.to(DEVICE), bad.to(DEVICE), [3, 2, 7, 8], torch.float64,
            "bilinear", False, "border", None)
    atomic = ops.crop_resize_backward_images(*args).cpu()
    with deterministic_algorithms():
        deterministic = ops.crop_resize_backward_images(*args).cpu()
    torch.testing.assert_close(deterministic, atomic, rtol=1e-12, atol=1e-12)
    x = images.clone().requires_grad_()
    out = reference.crop_resize(x, boxes, (3, 4), batch_index=bad.clamp(0, 2))
    (expected,) = torch.autograd.grad(out, x, grad)
    torch.testing.assert_close(atomic, expected, rtol=1e-10, atol=1e-10)


def test_outputs_too_large_for_int32_indices_are_refused():
    """Pixel indices are 32-bit in the kernels: an output of 2^31 pixels per box is an error
    before anything is allocated or launched."""
    images = torch.rand(1, 1, 4, 4, device=DEVICE)
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0]], device=DEVICE)
    with pytest.raises(ValueError, match="output elements per box, over the limit of"):
        triton_ops().crop_resize(images, boxes, None, [65536, 32768], "nearest", False,
                                 "border", None, None, torch.float32)
