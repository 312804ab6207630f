"""gfkernels.Kernels: the three ops under one backend policy (what the GFNet model and its engines
use) give what the functions give on every backend, check what they must (options once, tensors
on every call), resolve the backend once per device, and survive pickling and copies."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

import gfkernels
from gfkernels import backends

CPU = torch.device("cpu")
CPU_BACKENDS = backends.available_names(CPU)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "nearest"])
def test_crop_equals_crop_resize(backend, mode, generator):
    images = torch.randint(0, 256, (3, 3, 19, 23), generator=generator, dtype=torch.uint8)
    boxes = torch.rand(5, 4, generator=generator) * 30 - 4
    boxes[:, 2:] += boxes[:, :2]
    batch_index = torch.randint(0, 3, (5,), generator=generator)
    options = dict(mode=mode, align_corners=mode == "bicubic", padding_mode="zeros",
                   mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3], out_dtype=torch.float64)
    crop = gfkernels.Kernels(backend).crop((7, 5), **options)
    want = gfkernels.crop_resize(images, boxes, (7, 5), batch_index=batch_index, backend=backend,
                                 **options)
    assert torch.equal(crop(images, boxes, batch_index), want)
    assert torch.equal(gfkernels.Kernels(backend).crop_resize(images, boxes, (7, 5),
                                                              batch_index=batch_index, **options),
                       want)
    assert crop.size == (7, 5)


def test_crop_checks_its_options_when_made():
    kernels = gfkernels.Kernels()
    with pytest.raises(ValueError, match="mode must be one of"):
        kernels.crop(4, mode="area")
    with pytest.raises(ValueError, match="size must be positive"):
        kernels.crop((0, 4))
    with pytest.raises(ValueError, match="std must be non-zero"):
        kernels.crop(4, std=[1.0, 0.0])
    with pytest.raises(TypeError, match="out_dtype must be"):
        kernels.crop(4, out_dtype=torch.int32)
    with pytest.raises(ValueError, match="align_corners=True is not defined"):
        kernels.crop(4, mode="nearest", align_corners=True)


def test_crop_checks_the_tensors_of_every_call():
    crop = gfkernels.Kernels().crop(4, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    images = torch.rand(2, 3, 8, 8)
    boxes = torch.tensor([[0.0, 0, 8, 8]] * 2)
    assert crop(images, boxes).shape == (2, 3, 4, 4)
    with pytest.raises(ValueError, match="images must be 4-D"):
        crop(images[0], boxes)
    with pytest.raises(ValueError, match=r"boxes must be \(B, 4\)"):
        crop(images, boxes[:, :3])
    with pytest.raises(ValueError, match="mean must hold 1 or C = 1 values"):
        crop(images[:, :1], boxes)  # another channel count: checked on its first call
    with pytest.raises(IndexError, match="batch_index values must lie in"):
        gfkernels.Kernels("reference").crop(4)(images, boxes, torch.tensor([0, 2]))
    assert crop(images.double(), boxes).dtype == torch.float64  # out_dtype None: the images'


def test_output_limit_checked_per_channel_count():
    from gfkernels.contract import MAX_OUTPUT_ELEMENTS_PER_BOX

    side = int((MAX_OUTPUT_ELEMENTS_PER_BOX // 2) ** 0.5) + 1  # fits 1 channel, not 2
    crop = gfkernels.Kernels().crop(side)
    boxes = torch.tensor([[0.0, 0, 2, 2]])
    with pytest.raises(ValueError, match="over the limit"):
        crop(torch.rand(1, 2, 2, 2, device="meta"), boxes.to("meta"))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_early_exit_and_gather_rows_equal_the_functions(backend, generator):
    logits = torch.randn(6, 5, generator=generator)
    active = torch.tensor([7, 1, 3, 0, 5, 2])
    results = []
    for run in (lambda *a: gfkernels.Kernels(backend).early_exit(*a),
                lambda *a: gfkernels.early_exit(*a, backend=backend)):
        out_logits = torch.zeros(8, 5)
        exit_step = torch.zeros(8, dtype=torch.int64)
        keep, num_keep = run(logits, 0.3, active, out_logits, exit_step, 2)
        results.append((keep, num_keep, out_logits, exit_step))
    for a, b in zip(*results):
        assert torch.equal(a, b)
    keep, num_keep = results[0][:2]
    state = [active, torch.randn(6, 4, generator=generator)]
    got = gfkernels.Kernels(backend).gather_rows(state, keep, int(num_keep))
    want = gfkernels.gather_rows(state, keep, int(num_keep), backend=backend)
    assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_backend_resolved_once_per_device(monkeypatch):
    calls = []
    real = backends.resolve
    monkeypatch.setattr(backends, "resolve", lambda *a, **k: calls.append(a) or real(*a, **k))
    kernels = gfkernels.Kernels("reference")
    crop = kernels.crop(2)
    images, boxes = torch.rand(1, 1, 4, 4), torch.tensor([[0.0, 0, 4, 4]])
    for _ in range(3):
        crop(images, boxes)
        kernels.gather_rows([images], torch.tensor([0]), 1)
    assert len(calls) == 1 and kernels.backend_name(CPU) == "reference"


def test_bad_policies():
    with pytest.raises(ValueError, match="backend must be one of"):
        gfkernels.Kernels("metal")
    with pytest.raises(ValueError, match="backend='cuda' runs on CUDA tensors"):
        gfkernels.Kernels("cuda").crop(2)(torch.rand(1, 1, 4, 4), torch.tensor([[0.0, 0, 4, 4]]))


def test_pickle_and_copies_resolve_again():
    kernels = gfkernels.Kernels("reference", fallback=True)
    kernels.backend_name(CPU)
    for other in (pickle.loads(pickle.dumps(kernels)), copy.deepcopy(kernels), copy.copy(kernels)):
        assert (other.backend, other.fallback) == ("reference", True)
        assert other.backend_name(CPU) == "reference"
    crop = pickle.loads(pickle.dumps(kernels.crop(3, mean=[0.5], std=[2.0])))
    assert crop(torch.ones(1, 1, 4, 4), torch.tensor([[0.0, 0, 4, 4]])).tolist() == [[[[0.25] * 3] * 3]]


def test_a_model_with_its_kernels_saves_and_copies():
    from gfnet.config import build_config
    from gfnet.models import build_model

    cfg = build_config("digits", overrides=["model.pretrained=false"])
    model = build_model(cfg.model, kernel_backend="reference")
    twin = copy.deepcopy(model)
    assert twin.kernels.backend == "reference" and twin.kernels is not model.kernels
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    images = torch.randint(0, 256, (2, 1, 128, 128), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(loaded.glance_step(images).logits, model.glance_step(images).logits)


def test_renamed_config_key_still_loads():
    from gfnet.config import Config

    cfg = Config.from_dict({"run": {"patch_backend": "reference"}})
    assert cfg.run.kernel_backend == "reference"


def test_crop_resize_remembers_checked_options_by_value_and_type():
    """gfkernels.crop_resize checks a set of options once and finds it again by value and type:
    a float size after an int one is still refused, a list of mean values changed in place is
    a new set, and tensors of mean/std are never remembered."""
    from gfkernels.ops import crop_resize as module

    images, boxes = torch.rand(1, 1, 6, 6), torch.tensor([[0.0, 0, 6, 6]])
    mean, std = [0.5], [0.25]
    first = gfkernels.crop_resize(images, boxes, 3, mean=mean, std=std)
    contiguous, channels_last = torch.contiguous_format, torch.channels_last
    key = module._options_key(3, "bilinear", False, "border", mean, std, None, contiguous)
    assert key in module._OPTIONS
    # the layout is part of the options: another layout is another set
    gfkernels.crop_resize(images, boxes, 3, mean=mean, std=std, memory_format=channels_last)
    assert module._options_key(3, "bilinear", False, "border", mean, std, None,
                               channels_last) in module._OPTIONS
    with pytest.raises(ValueError, match="size must be an int"):
        gfkernels.crop_resize(images, boxes, 3.0, mean=mean, std=std)
    mean[0] = 0.0  # the same list object, other values: another set of options
    torch.testing.assert_close(gfkernels.crop_resize(images, boxes, 3, mean=mean, std=std),
                               first + 2.0)
    with pytest.raises(ValueError, match="std must be non-zero"):
        gfkernels.crop_resize(images, boxes, 3, std=[0.0])
    assert module._options_key(3, "bilinear", False, "border", torch.tensor([0.5]), None,
                               None, contiguous) is None
    assert module._options_key(3, "bilinear", 1, "border", None, None, None, contiguous) is None
    assert module._options_key(3, "bilinear", False, "border", None, None, None, "nchw") is None
