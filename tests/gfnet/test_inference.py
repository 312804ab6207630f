"""The dynamic engine against the anytime model: same logits at every sample's exit step."""

from __future__ import annotations

import math

import pytest
import torch
from gfnet.config import build_config
from gfnet.inference import (
    anytime_inference,
    confidences,
    dynamic_inference,
    exit_counts_of,
    simulate_exits,
)
from gfnet.models import build_model

from .conftest import tiny_overrides


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    cfg = build_config("digits", overrides=tiny_overrides())
    model = build_model(cfg.model).eval()
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (24, 1, 128, 128), generator=g, dtype=torch.uint8)
    anytime = anytime_inference(model, images)
    return model, images, anytime


def _settings(conf: torch.Tensor):
    T = conf.shape[0]
    q = [float(conf[t].quantile(0.5)) for t in range(T - 1)]
    return {
        "nobody_exits": None,
        "everybody_at_glance": [0.0] * (T - 1),
        "half_per_step": q,
        "only_step2": [math.inf] + [0.0] * (T - 2),
    }


@pytest.mark.parametrize("name", ["nobody_exits", "everybody_at_glance", "half_per_step", "only_step2"])
def test_dynamic_matches_anytime(setup, name):
    model, images, anytime = setup
    T = model.max_steps
    thr = _settings(confidences(anytime.logits))[name]
    r = dynamic_inference(model, images, thr)
    es, _ = simulate_exits(anytime.logits, thr)
    assert torch.equal(r.exit_step, es)
    assert ((r.exit_step >= 1) & (r.exit_step <= T)).all()
    # each sample's logits at its exit step equal the anytime model's at that step
    ref = anytime.logits[r.exit_step - 1, torch.arange(images.shape[0])]
    torch.testing.assert_close(r.logits, ref, rtol=1e-5, atol=1e-5)
    assert r.exit_counts == exit_counts_of(r.exit_step, T)
    assert sum(r.exit_counts) == images.shape[0]
    # boxes: the steps a sample took match the anytime boxes, later ones are NaN
    took = torch.arange(T)[None, :] < r.exit_step[:, None]
    torch.testing.assert_close(r.boxes[took], anytime.boxes[took])
    assert torch.isnan(r.boxes[~took]).all()
    if name == "nobody_exits":
        assert r.exit_counts == [0] * (T - 1) + [images.shape[0]]
    if name == "everybody_at_glance":
        assert r.exit_counts == [images.shape[0]] + [0] * (T - 1)
    if name == "half_per_step":
        assert 0 < r.exit_counts[0] < images.shape[0]


def test_training_mode_restored_and_float_images(setup):
    model, images, _ = setup
    model.train()
    try:
        r = dynamic_inference(model, images.float(), [0.0] * (model.max_steps - 1))
        assert model.training and model.global_encoder.training
    finally:
        model.eval()
    # float 0..255 images work as well as uint8 (normalisation fused either way)
    assert r.logits.shape == (images.shape[0], model.cfg.num_classes)


def test_empty_and_bad_batch(setup):
    model, images, _ = setup
    r = dynamic_inference(model, images[:0])
    assert r.logits.shape[0] == 0 and r.exit_counts == [0] * model.max_steps
    with pytest.raises(ValueError, match="B, C, H, W"):
        dynamic_inference(model, images[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_dynamic_matches_anytime_cuda(setup):
    model, images, _ = setup
    model = model.cuda()
    try:
        x = images.cuda()
        any_ = anytime_inference(model, x)
        thr = _settings(confidences(any_.logits))["half_per_step"]
        r = dynamic_inference(model, x, thr)
        ref = any_.logits[r.exit_step - 1, torch.arange(x.shape[0], device=x.device)]
        torch.testing.assert_close(r.logits, ref, rtol=1e-4, atol=1e-4)
    finally:
        model.cpu()
