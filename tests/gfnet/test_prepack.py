"""Convolutions packed for oneDNN once (gfnet.models.prepack): the same outputs as nn.Conv2d in
float32 and under bf16 autocast, for every shape of convolution the backbones use; a plain
convolution wherever packing does not apply (gradients, tracing for FLOP counts); packs that
follow their weight, survive neither a copy nor a pickle, and are safe to make from several
threads; and a GFNet kept for inference gives the same answers packed."""

from __future__ import annotations

import copy
import io
import threading

import pytest
import torch
from torch import nn

from gfnet.config import build_config
from gfnet.inference import anytime_inference
from gfnet.models import build_model
from gfnet.models.backbones import Backbone
from gfnet.models.folding import fold_batch_norms
from gfnet.models.prepack import (LARGE_LINEAR, PackedBottleneck, PackedConv2d, PackedGRUCell, PackedLinear,
                                  prepack_available, prepack_weights)
from torchvision.models.resnet import Bottleneck
from gfnet.precision import InferenceFormat

from .conftest import tiny_overrides

pytestmark = pytest.mark.skipif(not prepack_available(), reason="this torch has no oneDNN packed convolution")

# (in, out, kernel, stride, padding, dilation, groups, bias): a stem, 1x1 down-sampling without
# bias, a grouped dilated one, a depthwise one, a bottleneck's 3x3
CONVS = [(3, 8, 7, 2, 3, 1, 1, True), (8, 16, 1, 2, 0, 1, 1, False), (8, 12, 3, 1, 2, 2, 4, True),
         (12, 12, 3, 1, 1, 1, 12, False), (16, 16, 3, 1, 1, 1, 1, True)]


def _pair(spec, seed=0):
    cin, cout, k, s, p, d, g, bias = spec
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=g, bias=bias).eval()
    return conv, PackedConv2d.adopt(copy.deepcopy(conv))


def _input(cin, layout, seed=1):
    torch.manual_seed(seed)
    x = torch.randn(5, cin, 13, 11)  # odd sizes, a batch of 5
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("spec", CONVS, ids=lambda s: "x".join(map(str, s[:7])))
def test_packed_equals_the_convolution_in_float32_and_bf16(spec, layout):
    conv, packed = _pair(spec)
    if layout == "channels_last":
        conv, packed = conv.to(memory_format=torch.channels_last), packed.to(memory_format=torch.channels_last)
    x = _input(spec[0], layout)
    with torch.inference_mode():
        want, got = conv(x), packed(x)
        assert packed._packs, "the packed path did not run"
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            want16, got16 = conv(x), packed(x)
        assert got16.dtype == want16.dtype == torch.bfloat16
        torch.testing.assert_close(got16.float(), want16.float(), rtol=2e-2, atol=2e-2 * want16.abs().max().item())
        assert set(packed._packs) == {torch.float32, torch.bfloat16}


def test_a_plain_convolution_wherever_packing_does_not_apply():
    conv, packed = _pair(CONVS[4])
    x = _input(16, "contiguous")
    # gradients: the module trains like nn.Conv2d, and packs nothing
    out = packed(x)
    out.sum().backward()
    ref = conv(x)
    ref.sum().backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(packed.weight.grad, conv.weight.grad)
    assert not packed._packs
    # tracing (fvcore's FLOP count) sees aten's convolution
    with torch.no_grad():
        graph = torch.jit.trace(packed, x).inlined_graph
    assert "aten::_convolution" in str(graph) and "mkldnn" not in str(graph)
    assert set(packed.state_dict()) == set(conv.state_dict())


def test_packs_follow_the_weight_and_are_never_copied():
    conv, packed = _pair(CONVS[1])
    x = _input(8, "contiguous")
    with torch.no_grad():
        packed(x)
        other, _ = _pair(CONVS[1], seed=5)
        packed.load_state_dict(other.state_dict())  # new weights in place: the pack is remade
        torch.testing.assert_close(packed(x), other(x))
        clone = copy.deepcopy(packed)
        buffer = io.BytesIO()
        torch.save(packed, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
    assert packed._packs and not clone._packs and not loaded._packs
    with torch.no_grad():
        torch.testing.assert_close(clone(x), other(x))
        torch.testing.assert_close(loaded(x), other(x))


def test_threads_pack_and_run_the_same():
    conv, packed = _pair(CONVS[0])
    x = _input(3, "channels_last")
    with torch.no_grad():
        want = conv(x)
    outs = [None] * 4

    def run(i):
        with torch.inference_mode():
            outs[i] = packed(x)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for out in outs:
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_a_model_kept_for_inference_answers_the_same_packed():
    cfg = build_config("digits", overrides=tiny_overrides())
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    images = torch.randint(0, 256, (6, cfg.model.in_channels, cfg.model.image_size, cfg.model.image_size),
                           dtype=torch.uint8)
    plain = copy.deepcopy(model)
    plain.set_inference_format(InferenceFormat("fp32", True, fold_batch_norm=True))
    assert not any(isinstance(m, PackedConv2d) for m in plain.modules())  # digitnet does not ask for it
    for encoder in (model.global_encoder, model.local_encoder):
        encoder.cpu_prepack = True  # as ResNet, DenseNet, RegNet and EfficientNet do
    model.set_inference_format(InferenceFormat("fp32", True, fold_batch_norm=True))
    encoders = [m for e in (model.global_encoder, model.local_encoder) for m in e.modules()]
    assert any(isinstance(m, PackedConv2d) for m in encoders)
    assert not any(type(m) is nn.Conv2d for m in encoders)  # every plain one packed
    assert not any(isinstance(m, PackedConv2d) for m in model.policy.modules())  # not a backbone's
    assert prepack_weights(model) == 0  # already packed: nothing more to do
    want, got = anytime_inference(plain, images).logits, anytime_inference(model, images).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def _settled(module: nn.Module) -> nn.Module:
    """Random batch-norm statistics, so that folding them changes the weights."""
    torch.manual_seed(3)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return module.eval()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("stride", [1, 2])
def test_a_packed_bottleneck_fuses_its_relus_and_shortcut_to_the_same_result(stride, layout):
    """ResNet's bottleneck as three fused oneDNN calls (conv + ReLU twice, conv + shortcut +
    ReLU), with a projection shortcut (stride 2) and without (stride 1)."""
    torch.manual_seed(0)
    inplanes = 16 if stride == 1 else 8
    down = None if stride == 1 else nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
    block = _settled(Bottleneck(inplanes, 4, stride=stride, downsample=down))
    memory = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(3, inplanes, 9, 11).contiguous(memory_format=memory)
    with torch.no_grad():
        want = block(x)
    backbone = Backbone(nn.Sequential(block), 16, 16, nn.Identity(), cpu_prepack=True).eval()
    fold_batch_norms(backbone)
    backbone.to(memory_format=memory)
    assert prepack_weights(backbone) == 3 + (down is not None)
    fused = backbone.body[0]
    assert isinstance(fused, PackedBottleneck)
    with torch.inference_mode():
        got = fused(x)
        assert fused.conv3._packs  # the fused path ran
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    # with gradients it is torchvision's block again (on the folded convolutions)
    y = x.clone().requires_grad_(True)
    fused(y).sum().backward()
    assert y.grad is not None and y.grad.shape == x.shape


def test_a_bottleneck_with_batch_norm_left_is_not_fused():
    block = _settled(Bottleneck(16, 4))
    backbone = Backbone(nn.Sequential(block), 16, 16, nn.Identity(), cpu_prepack=True).eval()
    prepack_weights(backbone)  # batch norms not folded: the convolutions pack, the block stays
    assert type(backbone.body[0]) is Bottleneck and isinstance(backbone.body[0].conv1, PackedConv2d)


def test_large_linears_pack_and_answer_as_aten_does():
    """A Linear of at least LARGE_LINEAR weights runs float32 CPU inference on oneDNN's inner
    product (aten's result up to summation order); smaller ones, autocast, gradients, tracing
    and 3-d inputs keep aten's linear; a pack follows its weight and is never copied."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 7)).eval()
    assert model[0].weight.numel() == LARGE_LINEAR
    want_model = copy.deepcopy(model)
    assert prepack_weights(model) == 1
    assert isinstance(model[0], PackedLinear) and type(model[2]) is nn.Linear
    for rows in (1, 5, 33):
        x = torch.randn(rows, 1024)
        with torch.inference_mode():
            want, got = want_model(x), model(x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    assert model[0]._packs
    layer = model[0]
    x = torch.randn(4, 1024)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16  # autocast: aten's bf16 linear, as before
    out = layer(x.requires_grad_(True))
    out.sum().backward()  # gradients: aten's linear
    assert x.grad is not None
    with torch.no_grad():
        assert layer(torch.randn(2, 3, 1024)).shape == (2, 3, 1024)  # 3-d: aten's
        graph = str(torch.jit.trace(layer, torch.randn(2, 1024)).inlined_graph)
        assert "aten::linear" in graph and "mkldnn" not in graph
        other = nn.Linear(1024, 1024)
        layer.load_state_dict(other.state_dict())  # new weights: a new pack
        y = torch.randn(3, 1024)
        torch.testing.assert_close(layer(y), other(y), rtol=1e-5, atol=1e-4)
        assert not copy.deepcopy(layer)._packs


def test_large_gru_cells_pack_and_answer_as_aten_does():
    torch.manual_seed(0)
    holder = nn.ModuleDict({"big": nn.GRUCell(1024, 512), "small": nn.GRUCell(16, 8)}).eval()
    assert holder["big"].weight_ih.numel() >= LARGE_LINEAR
    want = copy.deepcopy(holder)
    assert prepack_weights(holder) == 1
    assert isinstance(holder["big"], PackedGRUCell) and type(holder["small"]) is nn.GRUCell
    x, h = torch.randn(7, 1024), torch.randn(7, 512)
    with torch.inference_mode():
        expected, got = want["big"](x, h), holder["big"](x, h)
        assert holder["big"]._packs
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(holder["big"](x), want["big"](x))  # no state given: aten's cell
    out = holder["big"](x, h.requires_grad_(True))  # gradients: aten's cell
    out.sum().backward()
    assert h.grad is not None and not copy.deepcopy(holder["big"])._packs
