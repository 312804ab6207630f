from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gfnet.config import build_config, get_preset, list_presets
from gfnet.models import GFNet, build_model, list_backbones
from gfnet.models.backbones import build_backbone
from gfnet.models.gfnet import GFState
from gfnet.errors import ConfigError


def _reduced(name: str):
    """The preset at reduced input size: P = 32, image 48, 10 classes, random weights."""
    return build_config(name, overrides=["model.patch_size=32", "model.image_size=48",
                                         "model.num_classes=10", "model.pretrained=false"])


@pytest.mark.parametrize("name", list_presets())
def test_preset_builds_forward_backward(name):
    cfg = _reduced(name)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    assert model.max_steps == get_preset(name).model.max_steps
    B, C, S = 2, cfg.model.in_channels, cfg.model.image_size
    images = torch.randint(0, 256, (B, C, S, S), dtype=torch.uint8)
    model.train()
    outs = model.rollout(images, policy="sample")
    assert len(outs) == cfg.model.max_steps
    for t, o in enumerate(outs):
        assert o.logits.shape == (B, 10) and o.head_logits.shape == (B, 10)
        assert o.state.step == t + 1
        assert o.state.fmap.shape == (B, *model.fmap_shape)
        if t > 0:
            assert o.action.shape == (B, 2) and o.log_prob.shape == (B,) and o.value.shape == (B,)
    loss = sum(F.cross_entropy(o.logits, torch.tensor([1, 2])) for o in outs)
    loss = loss + sum(o.log_prob.sum() + o.value.sum() for o in outs[1:])
    loss.backward()
    for part in ("local_encoder", "classifier", "policy"):
        grads = [p.grad for p in model.param_groups()[part]]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), part
    assert any(p.grad is not None for p in model.global_encoder.parameters())


def test_registry():
    assert {"resnet50", "densenet121", "regnet_y_600mf", "regnet_y_800mf", "regnet_y_1_6gf",
            "mobilenet_v3_large", "efficientnet_b2", "efficientnet_b3", "digitnet"} <= set(list_backbones())
    with pytest.raises(ConfigError, match="unknown backbone"):
        build_backbone("alexnet2", num_classes=10)
    bb = build_backbone("digitnet", num_classes=10, in_channels=1, width=8)
    pooled, fmap = bb(torch.zeros(2, 1, 32, 32))
    assert pooled.shape == (2, 32) and fmap.shape == (2, 32, 4, 4)


def test_patches_are_gfkernels_glance_and_exact_focus(tiny_cfg):
    from gfkernels.reference import per_sample_crop

    cfg = tiny_cfg(**{"model.patch_size": 32})
    model = build_model(cfg.model)
    x = torch.randint(0, 256, (3, 1, 128, 128), dtype=torch.uint8)
    m, s = cfg.model.mean[0], cfg.model.std[0]
    glance = model.glance_input(x)
    ref = (F.interpolate(x.float() / 255, size=32, mode="bicubic", align_corners=True) - m) / s
    torch.testing.assert_close(glance, ref, atol=1e-4, rtol=0)
    a = torch.tensor([[0.0, 1.0], [0.5, 0.25], [0.999, 0.3]])
    focus = model.focus_input(x, a)
    torch.testing.assert_close(focus, (per_sample_crop(x, a, 32).float() / 255 - m) / s, atol=1e-5, rtol=0)
    # row from a[0], column from a[1]: top-left = floor(a * (H - P))
    torch.testing.assert_close(focus[1], (x[1, :, 48:80, 24:56].float() / 255 - m) / s, atol=1e-5, rtol=0)


def test_step_api_on_active_rows_matches_full_batch(tiny_cfg):
    """glance_step / focus_step on a subset of rows (batch_index, the state compacted by the
    model's gather_rows) give the same logits as the full-batch rollout: what the dynamic
    inference engine relies on."""
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model: GFNet = build_model(cfg.model).eval()
    x = torch.randint(0, 256, (5, 1, 128, 128), dtype=torch.uint8)
    with torch.no_grad():
        full = model(x)  # anytime: every step's logits
        assert len(full) == cfg.model.max_steps
        out = model.glance_step(x)
        torch.testing.assert_close(out.logits, full[0])
        active = torch.tensor([0, 2, 4])

        def select(state, rows):
            return GFState.from_tensors(model.kernels.gather_rows(state.tensors(), rows, len(rows)),
                                        state.step)

        state = select(out.state, active)
        for t in range(1, cfg.model.max_steps):
            step = model.focus_step(x, state, batch_index=active)
            torch.testing.assert_close(step.logits, full[t][active], atol=1e-5, rtol=1e-5)
            state = step.state
            active, state = active[1:], select(state, torch.arange(1, len(state)))


def test_concat_classifier_state_grows():
    cfg = build_config("mobilenet_v3_large-p96", overrides=["model.patch_size=32", "model.image_size=40",
                                                           "model.num_classes=5"])
    model = build_model(cfg.model).eval()
    x = torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8)
    with torch.no_grad():
        outs = model.rollout(x)
    d = model.local_encoder.feature_dim
    assert [o.state.cls.shape[1] for o in outs] == [d, 2 * d, 3 * d]


def test_whole_image_boxes_made_once_and_usable_with_autograd():
    """The glance box is made once per (device, H, W) (no host copy per call) and expanded; one
    made first under inference mode still serves a crop that autograd saves for backward."""
    from gfnet.models.patches import glance_patches, whole_image_boxes

    images = torch.rand(3, 2, 17, 23, dtype=torch.float64)
    with torch.inference_mode():
        boxes = whole_image_boxes(images, 3)
    assert boxes.tolist() == [[0.0, 0.0, 23.0, 17.0]] * 3 and boxes.stride() == (0, 1)
    again = whole_image_boxes(images, 5)
    assert again.shape == (5, 4) and again.data_ptr() == boxes.data_ptr()  # one cached box
    x = images.clone().requires_grad_()
    out = glance_patches(x, 8, mean=[0.5], std=[0.25], out_dtype=torch.float64)
    out.sum().backward()  # the box is saved for backward: an ordinary tensor
    expected = F.interpolate(images, (8, 8), mode="bicubic", align_corners=True)
    torch.testing.assert_close(out, (expected - 0.5) / 0.25)
    assert x.grad is not None and x.grad.shape == images.shape


def test_focus_step_records_the_boxes_it_cropped():
    """focus_step makes its boxes once and hands them out (StepOutput.boxes): what the engine
    records is what was cropped."""
    from gfnet.models.patches import focus_boxes

    cfg = build_config("digits", overrides=["model.pretrained=false"])
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    images = torch.randint(0, 256, (4, 1, 128, 128), dtype=torch.uint8)
    with torch.inference_mode():
        first = model.glance_step(images)
        out = model.focus_step(images, first.state)
    assert first.boxes.tolist() == [[0.0, 0.0, 128.0, 128.0]] * 4  # the glance's box: the image
    assert torch.equal(out.boxes, focus_boxes(out.action, (128, 128), model.patch_size))
    P = model.patch_size
    with torch.inference_mode():
        crops = model.focus_input(images, out.action)
    for b, (x1, y1, _x2, _y2) in enumerate(out.boxes.int().tolist()):
        patch = images[b, :, y1:y1 + P, x1:x1 + P].float() / 255
        torch.testing.assert_close(crops[b], (patch - cfg.model.mean[0]) / cfg.model.std[0])


def test_cpu_inference_tiles_a_large_batch_with_the_same_answers():
    """digitnet runs a large inference batch on the CPU in tiles that fit its activations in the
    cache (Backbone.cpu_tile_bytes): the same outputs as the whole batch at once, and never
    when gradients are on, in train mode, or for a batch under two tiles."""
    torch.manual_seed(0)
    enc = build_backbone("digitnet", num_classes=10, in_channels=1).eval()
    x = torch.randn(131, 1, 48, 48)
    calls = []
    enc.body.register_forward_hook(lambda _m, inputs, _o: calls.append(inputs[0].shape[0]))
    with torch.inference_mode():
        first = enc(x)  # the first batch of a shape runs whole, measuring its activations
        assert calls == [131]
        tiled = enc(x)
        rows = enc.cpu_tile_bytes // enc._peak_bytes[(1, 48, 48, torch.float32)]
        assert len(calls[1:]) >= 2 and max(calls[1:]) <= rows and sum(calls[1:]) == 131
        whole = enc.features(x)
    for a, b, c in zip(tiled, whole, first):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert torch.equal(b, c)
    calls.clear()
    with torch.no_grad():
        enc(x[: rows + 1])  # under two tiles: whole
    assert calls == [rows + 1]
    calls.clear()
    enc(x)  # gradients on: whole
    enc.train()
    with torch.no_grad():
        enc(x)  # train mode (batch statistics): whole
    assert calls == [131, 131]
    assert build_backbone("resnet50", num_classes=10).cpu_tile_bytes is None  # compute-bound: never


def test_encoder_heads_run_only_when_their_logits_are_asked():
    """The encoders' own heads feed the training's auxiliary loss only: inference (every engine)
    never runs them, the training loss runs each once per step, with the step's features."""
    from gfnet.inference import anytime_inference, dynamic_inference, streaming_inference
    from gfnet.train import stage_loss

    from .conftest import tiny_overrides

    torch.manual_seed(0)
    cfg = build_config("digits", overrides=tiny_overrides())
    model = build_model(cfg.model).eval()
    calls = []
    for encoder in (model.global_encoder, model.local_encoder):
        encoder.head.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    size = cfg.model.image_size
    images = torch.randint(0, 256, (6, 1, size, size), dtype=torch.uint8)
    anytime_inference(model, images)
    dynamic_inference(model, images, [0.5] * (model.max_steps - 1))
    list(streaming_inference(model, [images[:3], images[3:]], [0.5] * (model.max_steps - 1),
                             pool_size=4))
    assert calls == []
    outs = model.rollout(images, policy="mean")
    assert calls == []
    direct = [o.encoder_head.head(o.encoder_head.features) for o in outs]
    loss = stage_loss(outs, torch.zeros(6, dtype=torch.long), head_weight=1.0)
    assert len(calls) == 2 * len(outs)  # the direct calls, then the loss's: one per step each
    expected = sum(F.cross_entropy(o.logits, torch.zeros(6, dtype=torch.long)) +
                   F.cross_entropy(d, torch.zeros(6, dtype=torch.long))
                   for o, d in zip(outs, direct)) / len(outs)
    torch.testing.assert_close(loss, expected)
