"""The backend table (gfkernels.backends): defaults per device, errors for missing or misplaced
backends, the fallback policy the model uses, and that every op goes through it."""

from __future__ import annotations

import warnings

import pytest
import torch

import gfkernels
from gfkernels import backends
from gfkernels.triton import interpreting

CPU = torch.device("cpu")
needs_cpp = pytest.mark.skipif(not backends.TABLE["cpp"].available(CPU),
                               reason="gfkernels._C is not built")


@pytest.fixture
def without_extension(monkeypatch):
    """The table as in a source tree whose extension was not built."""
    monkeypatch.setattr(backends, "_C", None)
    monkeypatch.setattr(backends, "_C_ERROR", ImportError("no module named gfkernels._C"))
    monkeypatch.setattr(backends, "_warned", set())
    monkeypatch.setattr(backends, "_resolved", {})


@needs_cpp
def test_defaults():
    assert backends.resolve(None, CPU).name == "cpp"
    assert gfkernels.default_backend("cpu") == "cpp"
    assert gfkernels.default_backend("cuda") == "cuda"
    assert backends.default_name(torch.device("meta")) == "reference"


def test_unknown_name():
    with pytest.raises(ValueError, match="backend must be one of"):
        backends.resolve("metal", CPU)


def test_backend_of_another_device_is_a_value_error():
    with pytest.raises(ValueError, match="backend='cuda' runs on CUDA tensors, got tensors on cpu"):
        backends.resolve("cuda", CPU)
    with pytest.raises(ValueError, match="backend='cpp' runs on CPU tensors"):
        backends.resolve("cpp", torch.device("meta"))


def test_triton_where_it_runs():
    if interpreting():
        assert backends.resolve("triton", CPU).name == "triton"
        with pytest.raises(ValueError, match="runs on CPU tensors"):
            backends.resolve("triton", torch.device("cuda"))
    else:
        with pytest.raises(ValueError, match="runs on CUDA tensors"):
            backends.resolve("triton", CPU)


def test_missing_extension_is_an_error_without_fallback(without_extension):
    with pytest.raises(RuntimeError, match="gfkernels._C is not built.*pip install"):
        backends.resolve(None, CPU)
    with pytest.raises(RuntimeError, match="backend='cpp' is not available"):
        backends.resolve("cpp", CPU)
    with pytest.raises(RuntimeError, match="is not available"):
        gfkernels.crop_resize(torch.rand(1, 1, 4, 4), torch.tensor([[0.0, 0, 4, 4]]), 2)


def test_fallback_warns_once(without_extension):
    with pytest.warns(RuntimeWarning, match="use the 'reference' backend instead"):
        assert backends.resolve(None, CPU, fallback=True).name == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends.resolve(None, CPU, fallback=True).name == "reference"
    # A named backend is never replaced.
    with pytest.raises(RuntimeError):
        backends.resolve("cpp", CPU, fallback=True)


def test_model_kernels_fall_back_for_every_op(without_extension):
    """Without the extension a model's kernels fall back to the reference, for its crops and for
    its engines' early_exit and gather_rows alike (one warning), so an unbuilt tree runs both."""
    from gfnet.config import build_config
    from gfnet.inference import anytime_inference, dynamic_inference, simulate_exits
    from gfnet.models import build_model
    from gfnet.models.patches import glance_patches, model_kernels

    with pytest.warns(RuntimeWarning, match="reference"):
        assert model_kernels(None).backend_name(CPU) == "reference"
    images = torch.randint(0, 256, (2, 1, 12, 12), dtype=torch.uint8)
    out = glance_patches(images, 4, mean=[0.5], std=[0.25])
    expected = gfkernels.reference.crop_resize(
        images, torch.tensor([[0.0, 0, 12, 12]] * 2), 4, mode="bicubic", align_corners=True,
        mean=[0.5], std=[0.25])
    torch.testing.assert_close(out, expected)

    cfg = build_config("digits", overrides=["model.pretrained=false", "model.max_steps=3"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    canvases = torch.randint(0, 256, (5, 1, 128, 128), dtype=torch.uint8)
    every_step = anytime_inference(model, canvases)
    confidence = torch.softmax(every_step.logits[0].double(), 1).amax(1).sort().values
    # between the 2nd and 3rd most confident glances: 3 exit at the glance, 2 at step 3
    thresholds = [float(confidence[1] + confidence[2]) / 2, 2.0]
    result = dynamic_inference(model, canvases, thresholds)
    assert model.kernels.backend_name(CPU) == "reference"
    exit_step, logits = simulate_exits(every_step.logits, thresholds)
    assert result.exit_counts[0] >= 1 and result.exit_counts[2] >= 1
    assert torch.equal(result.exit_step, exit_step)
    torch.testing.assert_close(result.logits, logits, atol=1e-5, rtol=1e-5)


def test_every_op_has_every_backend():
    for name in backends.available_names(CPU):
        backend = backends.TABLE[name]
        for op in ("crop_resize", "early_exit", "gather_rows"):
            assert callable(backend.op(op)), (name, op)


def test_build_info_lists_the_usable_backends():
    info = gfkernels.build_info()
    assert info["backends"] == list(backends.available_names())
    assert "reference" in info["backends"]
