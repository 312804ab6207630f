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


def test_model_patches_use_the_table(without_extension):
    from gfnet.models.patches import _backend, glance_patches

    with pytest.warns(RuntimeWarning, match="reference"):
        assert _backend(None, CPU) == "reference"
    images = torch.randint(0, 256, (2, 1, 12, 12), dtype=torch.uint8)
    out = glance_patches(images, 4, mean=[0.5], std=[0.25])
    expected = gfkernels.reference.crop_resize(
        images, torch.tensor([[0.0, 0, 12, 12]] * 2), 4, mode="bicubic", align_corners=True,
        mean=[0.5], std=[0.25])
    torch.testing.assert_close(out, expected)


def test_every_op_has_every_backend():
    for name in backends.available_names(CPU):
        backend = backends.TABLE[name]
        for op in ("crop_resize", "early_exit", "gather_rows"):
            assert callable(backend.op(op)), (name, op)


def test_build_info_lists_the_usable_backends():
    info = gfkernels.build_info()
    assert info["backends"] == list(backends.available_names())
    assert "reference" in info["backends"]
