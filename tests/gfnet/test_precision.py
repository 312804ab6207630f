"""The inference format (gfnet.precision): channels_last and bf16 give the fp32 contiguous
answers within their dtype's rounding, on every engine; exits are decided on float32 logits;
thresholds are calibrated, stored and used per precision; bad options are clear errors."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from gfnet.checkpoint import save_atomic
from gfnet.cli import main
from gfnet.config import build_config
from gfnet.data import ClutteredDigits
from gfnet.errors import ConfigError
from gfnet.inference import anytime_inference, dynamic_inference, streaming_inference
from gfnet.models import build_model
from gfnet.precision import FP32, InferenceFormat, precision_note

import gfnet

from .conftest import save_gfnet_checkpoint, tiny_overrides
from .test_cli_eval import _sets

CHANNELS_LAST = InferenceFormat("fp32", channels_last=True)
BF16 = InferenceFormat("bf16", channels_last=True)


@pytest.fixture(scope="module")
def canvases():
    ds = ClutteredDigits("test", length=24)
    return torch.stack([ds[i][0] for i in range(24)])


def _model(fmt=FP32, **extra):
    """The same freshly initialised tiny digits model (RGB-free: 1 channel) in ``fmt``."""
    torch.manual_seed(0)
    cfg = build_config("digits", overrides=tiny_overrides(**extra))
    return build_model(cfg.model).eval().set_inference_format(fmt)


def _rgb_model(fmt=FP32):
    return _model(fmt, **{"model.in_channels": 3, "model.mean": "0.5,0.4,0.3", "model.std": "0.25,0.25,0.25"})


def _logit_scale(logits: torch.Tensor) -> float:
    return float(logits.abs().max())


@pytest.mark.parametrize("make", [_model, _rgb_model], ids=["gray", "rgb"])
def test_channels_last_gives_the_contiguous_answers(make, canvases):
    images = canvases if make is _model else canvases.expand(-1, 3, -1, -1).contiguous()
    ref_model, cl_model = make(), make(CHANNELS_LAST)
    conv = next(m for m in cl_model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    ref, got = anytime_inference(ref_model, images), anytime_inference(cl_model, images)
    # fp32 either way: only the order of the convolutions' sums differs
    assert (got.logits - ref.logits).abs().max() <= 1e-5 * max(_logit_scale(ref.logits), 1.0)
    assert torch.equal(got.boxes, ref.boxes)
    thr = [0.2, 0.25]
    a, b = dynamic_inference(ref_model, images, thr), dynamic_inference(cl_model, images, thr)
    assert torch.equal(a.exit_step, b.exit_step)
    assert torch.allclose(a.logits, b.logits, atol=1e-5 * max(_logit_scale(a.logits), 1.0), rtol=0)


def test_channels_last_patches_come_from_the_kernels_in_that_layout(canvases, monkeypatch):
    """A channels_last model's glance and focus patches are written in channels_last by the crop
    kernels themselves (the op is asked for the layout; nothing reorders them afterwards), and
    hold the contiguous patches' values."""
    import gfkernels

    images = canvases.expand(-1, 3, -1, -1).contiguous()
    model = _rgb_model(CHANNELS_LAST)
    asked = []
    real_call = gfkernels.ops.crop_resize.call

    def spy(backend, op, needs_grad, *args):
        asked.append(args[-1])  # the op's channels_last argument
        return real_call(backend, op, needs_grad, *args)

    monkeypatch.setattr(gfkernels.ops.crop_resize, "call", spy)
    monkeypatch.setattr(torch.Tensor, "contiguous", lambda *a, **k: pytest.fail("a reorder"))
    boxes = torch.tensor([[0.0, 0, 96, 96], [10, 20, 58, 68]]).repeat(12, 1)[:24]
    glance, focus = model.patches.glance(images, boxes), model.patches.focus(images, boxes)
    monkeypatch.undo()
    assert asked == [True, True]
    for patches in (glance, focus):
        assert patches.stride() == torch.empty(patches.shape,
                                               memory_format=torch.channels_last).stride()
    model.patches.channels_last = False
    assert torch.equal(glance, model.patches.glance(images, boxes))
    assert torch.equal(focus, model.patches.focus(images, boxes))


def test_bf16_stays_within_its_rounding_and_exits_on_float32(canvases):
    ref_model, bf_model = _model(), _model(BF16)
    ref, got = anytime_inference(ref_model, canvases), anytime_inference(bf_model, canvases)
    assert got.logits.dtype == torch.float32  # widened before exits are decided
    # bf16 keeps 8 bits of mantissa: each layer rounds at 2^-8 relative; a few percent of the
    # logits' scale after a dozen layers, far from the fp32 answers' agreement (1e-5)
    err = float((got.logits - ref.logits).abs().max())
    assert 0 < err <= 0.1 * _logit_scale(ref.logits)
    thr = [0.2, 0.25]
    r = dynamic_inference(bf_model, canvases, thr)
    assert r.logits.dtype == torch.float32 and r.exit_step.min() >= 1
    # the engine's exits are those of its own (bf16, widened) anytime logits
    conf = torch.softmax(got.logits, dim=2).amax(2)
    expected = torch.full((canvases.shape[0],), 3, dtype=torch.int64)
    for t in (1, 0):
        expected[conf[t] >= thr[t]] = t + 1
    assert torch.equal(r.exit_step, expected)
    streamed = list(streaming_inference(bf_model, [canvases[:10], canvases[10:]], thr, pool_size=8))
    ids = torch.cat([s.ids for s in streamed])
    steps = torch.cat([s.exit_step for s in streamed])[ids.argsort()]
    assert torch.equal(steps, r.exit_step)
    assert all(s.logits.dtype == torch.float32 for s in streamed)


def test_bad_formats_are_clear_errors(monkeypatch):
    with pytest.raises(ConfigError, match="precision must be one of fp32, bf16, fp16, not 'fp8'"):
        InferenceFormat.choose("fp8", "cpu")
    with pytest.raises(ConfigError, match="'fp16' runs on a GPU only"):
        InferenceFormat.choose("fp16", "cpu")
    with pytest.raises(ConfigError, match="layout must be one of auto, channels_last, contiguous"):
        InferenceFormat.choose("fp32", "cpu", "nhwc")
    with pytest.raises(ConfigError, match="run.precision must be fp32|bf16|fp16"):
        build_config("digits", overrides=["run.precision=half"])
    assert InferenceFormat.choose("bf16", "cpu") == BF16
    assert InferenceFormat.choose("fp32", "cpu", "contiguous") == FP32
    monkeypatch.setattr("gfnet.precision.cpu_has_native_bf16", lambda: False)
    assert "no native bf16" in precision_note("bf16", "cpu")
    assert precision_note("fp32", "cpu") is None and precision_note("bf16", "cuda") is None


def test_predictor_takes_a_precision_and_warns_where_it_is_slow(tmp_path, canvases, monkeypatch):
    cfg = build_config("digits", overrides=tiny_overrides())
    path = save_gfnet_checkpoint(tmp_path / "stage3.pt", cfg, _model(), stage=3, done=True)
    p32 = gfnet.load(path, "cpu", layout="contiguous")
    pbf = gfnet.load(path, "cpu", precision="bf16")
    assert p32.inference_format == InferenceFormat("fp32", False, fold_batch_norm=True)
    assert pbf.inference_format == InferenceFormat("bf16", True, fold_batch_norm=True)
    assert "bf16, channels_last, batch norm folded" in repr(pbf)
    images = list(canvases[:6])
    a, b = p32(images, threshold=0.0), pbf(images, threshold=0.0)
    assert [p.exit_step for p in a] == [p.exit_step for p in b] == [1] * 6
    assert b.logits.dtype == torch.float32
    with pytest.raises(ConfigError, match="'fp16' runs on a GPU only"):
        gfnet.load(path, "cpu", precision="fp16")
    monkeypatch.setattr("gfnet.precision.cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="no native bf16"):
        gfnet.load(path, "cpu", precision="bf16")


def test_thresholds_are_calibrated_and_used_per_precision(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--preset", "digits", "--epochs", "1", "--out", str(run),
                 *_sets("run.max_train_batches=1")]) == 0
    assert main(["eval", str(run), "--out", str(run / "ev32"), "--budgets", "20"]) == 0
    assert main(["eval", str(run), "--out", str(run / "evbf"), "--budgets", "20", "--precision", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "calibrated 39 budgets in fp32" in out and "calibrated 39 budgets in bf16" in out
    ck = torch.load(run / "stage3.pt", weights_only=True)
    assert {"exit_thresholds", "exit_thresholds_bf16"} <= set(ck)
    bf = json.loads((run / "evbf" / "eval.json").read_text())
    assert bf["precision"] == "bf16" and bf["layout"] == "channels_last"
    # the bf16 thresholds are the ones a bf16 predictor uses, the fp32 ones an fp32 predictor
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pbf = gfnet.load(run, "cpu", precision="bf16")
    assert pbf.calibration.to_dict() == ck["exit_thresholds_bf16"]
    assert gfnet.load(run, "cpu").calibration.to_dict() == ck["exit_thresholds"]
    # a second bf16 evaluation reuses them
    assert main(["eval", str(run), "--out", str(run / "evbf2"), "--budgets", "20", "--precision", "bf16"]) == 0
    assert "using the thresholds stored" in capsys.readouterr().out
    # only fp32 thresholds: a bf16 predictor uses them and says so
    del ck["exit_thresholds_bf16"]
    save_atomic(ck, run / "only32.pt")
    with pytest.warns(UserWarning, match="calibrated in fp32, not bf16"):
        p = gfnet.load(run / "only32.pt", "cpu", precision="bf16")
    assert p.calibration.to_dict() == ck["exit_thresholds"]


def test_channels_last_training_gives_the_contiguous_gradients():
    """run.train_layout=channels_last: the same gradients as contiguous training. digitnet's first
    shortcut (a strided 1x1 convolution from fewer than 16 channels, at 48 px) crashed oneDNN's
    channels_last weight gradient; models/backbones._PointwiseConv takes another way there."""
    grads = []
    for layout in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(0)
        cfg = build_config("digits", overrides=tiny_overrides())
        model = build_model(cfg.model).to(memory_format=layout).train()
        x = torch.randint(0, 256, (8, 1, 128, 128), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
        y = torch.arange(8) % 10
        outs = model.rollout(x, policy="random", generator=torch.Generator().manual_seed(2))
        sum(torch.nn.functional.cross_entropy(o.logits, y) for o in outs).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        # float32 sums over a batch's pixels in another order, through training-mode batch norm
        # (whose gradient subtracts means): contiguous float32 itself is 2.3e-3 of the largest
        # gradient off the same model in float64 here, channels_last 2.4e-3
        assert torch.allclose(grads[1][name], g, rtol=0, atol=5e-3 * float(g.abs().max())), name


def test_train_layout_switch(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--preset", "digits", "--epochs", "1", "--stage", "1", "--out", str(run),
                 *_sets("run.max_train_batches=1", "run.train_layout=channels_last")]) == 0
    ck = torch.load(run / "stage1.pt", weights_only=True)
    conv = ck["model"]["local_encoder.body.3.conv1.weight"]  # 8 -> 16 channels (the stem has 1 in)
    assert conv.dim() == 4 and conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    with pytest.raises(ConfigError, match="run.train_layout must be contiguous|channels_last"):
        build_config("digits", overrides=["run.train_layout=auto"])


def _randomise_batch_norms(model):
    """Statistics and affine parameters away from identity, so a fold that got them wrong shows."""
    g = torch.Generator().manual_seed(5)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)


@pytest.mark.parametrize("preset", ["digits", "mobilenet_v3_large-p96", "resnet50-p96"])
def test_folding_batch_norm_keeps_the_answers(preset):
    from gfnet.flops import count_step_flops

    torch.manual_seed(0)
    cfg = build_config(preset, overrides=["model.pretrained=false"])
    model = build_model(cfg.model).eval()
    _randomise_batch_norms(model)
    m = cfg.model
    images = torch.randint(0, 256, (3, m.in_channels, m.image_size, m.image_size),
                           generator=torch.Generator().manual_seed(6), dtype=torch.uint8)
    ref = anytime_inference(model, images)
    macs = count_step_flops(model, static=False, cross_check=False).macs
    model.set_inference_format(InferenceFormat("fp32", True, fold_batch_norm=True))
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in model.modules())  # every one folded
    got = anytime_inference(model, images)
    # float32 rounding through 50 layers in another order (resnet50: 2.2e-5); the bar is 1e-4
    assert (got.logits - ref.logits).abs().max() <= 1e-4 * _logit_scale(ref.logits)
    assert torch.equal(got.boxes, ref.boxes)
    assert count_step_flops(model, static=False, cross_check=False).macs == macs  # fvcore counts no BN


def test_folding_leaves_what_it_cannot_prove():
    from gfnet.models.folding import fold_batch_norms

    class BatchNormAct(torch.nn.BatchNorm2d):  # does more than a batch norm (as timm's does)
        def forward(self, x):
            return torch.relu(super().forward(x))

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), BatchNormAct(4), torch.nn.Conv2d(4, 4, 1),
                              torch.nn.ReLU(), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 5, 1),
                              torch.nn.BatchNorm2d(5)).eval()
    assert fold_batch_norms(net) == 1  # only the last pair: conv then a plain batch norm
    assert isinstance(net[1], BatchNormAct) and isinstance(net[4], torch.nn.BatchNorm2d)
    assert isinstance(net[6], torch.nn.Identity)
    model = _model().train()
    with pytest.raises(ValueError, match="eval mode"):
        model.set_inference_format(InferenceFormat(fold_batch_norm=True))


def test_load_folds_its_own_model_and_never_a_given_one(tmp_path):
    cfg = build_config("digits", overrides=tiny_overrides())
    path = save_gfnet_checkpoint(tmp_path / "stage3.pt", cfg, _model(), stage=3, done=True)
    loaded = gfnet.load(path, "cpu")
    assert loaded.inference_format.fold_batch_norm
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in loaded.model.modules())
    mine = _model()
    gfnet.Predictor(mine, cfg)
    assert any(isinstance(x, torch.nn.BatchNorm2d) for x in mine.modules())
