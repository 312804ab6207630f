"""gfkernels.boxes: the focus boxes the model crops equal the reference's definition bit for bit,
leave their inputs alone, and need no host copy; the whole-image box is made once per size."""

from __future__ import annotations

import pytest
import torch

import gfkernels
from gfkernels import reference

SIZES = [((96, 96), 32), ((128, 100), 48), ((37, 53), 17), ((40, 40), 40), ((224, 224), 96)]


@pytest.mark.parametrize("image_hw, patch", SIZES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_focus_boxes_equal_the_definition(image_hw, patch, dtype, generator):
    H, W = image_hw
    actions = torch.rand(257, 2, generator=generator, dtype=torch.float64)
    # the edges and beyond (clamped), and actions whose product lands on a whole pixel
    edges = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-0.5, 1.5], [1.5, -0.5], [0.5, 0.25],
                          [1 / 3, 2 / 3], [0.999999, 1e-9]], dtype=torch.float64)
    if H > patch and W > patch:
        whole = torch.arange(H - patch + 1, dtype=torch.float64) / (H - patch)
        edges = torch.cat([edges, torch.stack([whole, whole.flip(0) * 0.999], 1)])
    actions = torch.cat([actions, edges]).to(dtype)
    got = gfkernels.focus_boxes(actions, image_hw, patch)
    want = reference.focus_boxes(actions, image_hw, patch)
    assert got.dtype == want.dtype == dtype
    assert torch.equal(got, want)
    # non-contiguous actions (a column-major view) give the same boxes
    strided = actions.t().contiguous().t()
    assert not strided.is_contiguous() or actions.shape[0] == 1
    assert torch.equal(gfkernels.focus_boxes(strided, image_hw, patch), want)


def test_focus_boxes_leave_their_actions_alone(generator):
    """Out-of-range float64 actions are clamped in a copy: neither the implementation nor the
    definition writes the caller's tensor (the definition once clamped float64 actions in
    place, since .to(float64) of float64 is the tensor itself)."""
    actions = torch.tensor([[-0.5, 1.5], [0.3, 0.7]], dtype=torch.float64)
    before = actions.clone()
    gfkernels.focus_boxes(actions, (64, 64), 16)
    reference.focus_boxes(actions, (64, 64), 16)
    assert torch.equal(actions, before)


def test_focus_boxes_int_size_other_dtypes_and_no_grad():
    actions = torch.tensor([[0.5, 0.5]], requires_grad=True)
    boxes = gfkernels.focus_boxes(actions, 30, 12)
    assert boxes.tolist() == [[9.0, 9.0, 21.0, 21.0]] and not boxes.requires_grad
    as_int = gfkernels.focus_boxes(torch.tensor([[1, 0]]), (30, 20), 10)
    assert as_int.dtype == torch.float32 and as_int.tolist() == [[0.0, 20.0, 10.0, 30.0]]
    assert gfkernels.focus_boxes(torch.empty(0, 2), 30, 12).shape == (0, 4)


def test_focus_boxes_under_inference_mode_then_autograd():
    """Constants first made under inference mode still serve calls outside it."""
    with torch.inference_mode():
        gfkernels.focus_boxes(torch.rand(2, 2), (41, 43), 7)
    boxes = gfkernels.focus_boxes(torch.rand(2, 2), (41, 43), 7)
    assert not boxes.is_inference()


def test_whole_image_boxes():
    images = torch.zeros(3, 1, 17, 23)
    boxes = gfkernels.whole_image_boxes(images, 3)
    assert boxes.tolist() == [[0.0, 0.0, 23.0, 17.0]] * 3 and boxes.dtype == torch.float32
    assert gfkernels.whole_image_boxes(images, 5).data_ptr() == boxes.data_ptr()  # one cached box
