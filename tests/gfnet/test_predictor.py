"""gfnet.load -> Predictor: every kind of input gives what the dynamic engine gives when run by
hand on the same preprocessed batch (same classes, exit steps, logits and boxes); exit rules,
MACs, class names, batching and bad input."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from gfnet.exits import calibrate
from gfnet.checkpoint import FORMAT, save_atomic
from gfnet.config import build_config
from gfnet.data import ClutteredDigits, read_image
from gfnet.data.preprocess import eval_preprocess
from gfnet.errors import CheckpointError, DataError, GFNetError
from gfnet.flops import average_macs, count_step_flops
from gfnet.inference import anytime_inference, dynamic_inference
from gfnet.models import build_model
from PIL import Image

import gfnet

from .conftest import save_gfnet_checkpoint, tiny_overrides

BUDGET = 20


def _checkpoint(path, cfg, calib_images, **extra):
    """A gfnet checkpoint of a freshly initialised model, with the thresholds of every budget
    calibrated on ``calib_images`` stored as ``gfnet eval`` stores them."""
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    logits = anytime_inference(model, calib_images).logits
    cal = calibrate(logits, count_step_flops(model, static=False).macs)
    return save_gfnet_checkpoint(path, cfg, model, stage=3, done=True, exit_thresholds=cal.to_dict(), **extra)


@pytest.fixture(scope="module")
def canvases():
    """Test canvases of the digits preset, (N, 1, 128, 128) uint8."""
    ds = ClutteredDigits("test", length=12)
    return torch.stack([ds[i][0] for i in range(12)])


@pytest.fixture(scope="module")
def gray(tmp_path_factory):
    """A grayscale digits predictor (128 x 128, the digits preset's patch, 3 steps), calibrated."""
    cfg = build_config("digits", overrides=tiny_overrides())
    val = torch.stack([ClutteredDigits("val", length=32)[i][0] for i in range(32)])
    path = _checkpoint(tmp_path_factory.mktemp("gray") / "stage3.pt", cfg, val)
    return gfnet.load(path, device="cpu")


@pytest.fixture(scope="module")
def rgb(tmp_path_factory):
    """An RGB predictor on a non-square 80 x 112 image with ImageNet-style evaluation (scale to
    cover size / 0.875, bilinear, centre crop), calibrated."""
    cfg = build_config("digits", overrides=tiny_overrides(**{
        "data.dataset": "imagefolder", "model.in_channels": 3, "model.mean": "0.5,0.4,0.3",
        "model.std": "0.25,0.25,0.25", "model.image_size": "80,112", "model.patch_size": 48,
        "model.eval_crop_fraction": 0.875, "model.eval_interpolation": "bilinear"}))
    g = torch.Generator().manual_seed(3)
    val = torch.randint(0, 256, (32, 3, 80, 112), generator=g, dtype=torch.uint8)
    names = [f"class {k}" for k in range(10)]
    path = _checkpoint(tmp_path_factory.mktemp("rgb") / "stage3.pt", cfg, val, class_names=names)
    return gfnet.load(path, device="cpu")


def _by_hand(predictor, batch, result, budget=BUDGET):
    """The engine run by hand on ``batch`` matches ``result`` (a Predictions) row for row."""
    thr = predictor.calibration.point(budget).thresholds
    r = dynamic_inference(predictor.model, batch, thr)
    assert result.class_indices == r.prediction.tolist()
    assert result.exit_steps == r.exit_step.tolist()
    assert torch.equal(result.logits, r.logits.float())
    for i, p in enumerate(result):
        assert p.model_boxes == [tuple(b) for b in r.boxes[i, :p.exit_step].tolist()]
    assert result.exit_counts == r.exit_counts
    return r


def _spread(result):
    """The calibrated budget splits the batch: not every image exits at one step."""
    assert len(set(result.exit_steps)) > 1, result.exit_steps


# ---------------------------------------------------------------------- one test per input kind
def test_file_paths(gray, canvases, tmp_path):
    paths = []
    for i, x in enumerate(canvases):
        paths.append(tmp_path / f"c{i}.png")
        Image.fromarray(x[0].numpy()).save(paths[-1])
    res = gray([str(p) for p in paths[:6]] + paths[6:], budget=BUDGET)  # str and Path
    assert [p.input for p in res] == [str(p) for p in paths]
    batch = torch.stack([read_image(p, 1, 128, crop_fraction=1.0, interpolation="bicubic") for p in paths])
    assert torch.equal(batch, canvases)  # lossless PNG, and the digits model takes 128 x 128 as it is
    _by_hand(gray, canvases, res)
    _spread(res)
    assert all(p.boxes == p.model_boxes and p.image_size == p.model_size == (128, 128) for p in res)


def test_pil_images(gray, canvases):
    res = gray([Image.fromarray(x[0].numpy()) for x in canvases], budget=BUDGET)
    assert [p.input for p in res] == [f"images[{i}]" for i in range(len(canvases))]
    _by_hand(gray, canvases, res)


def test_numpy_arrays(gray, canvases):
    hw = [x[0].numpy() for x in canvases]  # (H, W) grayscale
    hwc = [x.permute(1, 2, 0).numpy() for x in canvases]  # (H, W, 1)
    nhwc = canvases.permute(0, 2, 3, 1).numpy()  # one (N, H, W, C) batch
    for images in (hw, hwc, nhwc):
        _by_hand(gray, canvases, gray(images, budget=BUDGET))
    single = gray(hw[3], budget=BUDGET)
    assert len(single) == 1 and single[0].input == "image"
    _by_hand(gray, canvases[3:4], single)


def test_tensors_uint8(gray, canvases):
    _by_hand(gray, canvases, gray(canvases, budget=BUDGET))  # (N, C, H, W)
    _by_hand(gray, canvases, gray(list(canvases), budget=BUDGET))  # [(C, H, W)]
    _by_hand(gray, canvases, gray([x[0] for x in canvases], budget=BUDGET))  # [(H, W)]
    strided = canvases.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # channels_last
    _by_hand(gray, canvases, gray(strided, budget=BUDGET))


def test_tensors_float(gray, canvases):
    x = canvases.float() / 255
    res = gray(x, budget=BUDGET)
    _by_hand(gray, x, res)
    assert gray.preprocess(x[:1])[0].image.dtype == torch.float32
    # float64 images are taken as float32
    _by_hand(gray, x, gray(x.double(), budget=BUDGET))
    # a list mixing uint8 and float images runs as one float batch
    mixed = [canvases[i] if i % 2 else x[i] for i in range(len(canvases))]
    _by_hand(gray, x, gray(mixed, budget=BUDGET))


def test_mixed_sizes_resized(gray, canvases):
    """Images of other sizes are scaled to cover 128 x 128 keeping their aspect ratio and
    centre-cropped; the boxes map back into each image as given."""
    g = torch.Generator().manual_seed(5)
    big = ClutteredDigits("test", canvas_size=(150, 250), length=1)[0][0]  # (1, 150, 250)
    small = torch.randint(0, 256, (1, 100, 90), generator=g, dtype=torch.uint8)
    images = [canvases[0], big, small.numpy()[0], canvases[1], Image.fromarray(big[0].numpy())]
    res = gray(images, budget=BUDGET)
    big_in, small_in = (eval_preprocess(x, 128, 1.0, "bicubic")[0] for x in (big, small))
    expect = [canvases[0], big_in, small_in, canvases[1], big_in]
    _by_hand(gray, torch.stack(expect), res)
    assert [p.image_size for p in res] == [(128, 128), (150, 250), (100, 90), (128, 128), (150, 250)]
    assert all(p.model_size == (128, 128) for p in res)
    # 150 x 250 covered by 128 x 213, the centre 128 columns kept: x = (u + 42) * 250 / 213
    glance = res[1].boxes[0]
    assert glance == pytest.approx((42 * 250 / 213, 0.0, 170 * 250 / 213, 150.0))
    for p in res:
        for x1, y1, x2, y2 in p.boxes:
            assert 0 <= x1 < x2 <= p.image_size[1] and 0 <= y1 < y2 <= p.image_size[0]


def test_mixed_sizes_at_their_own_size(gray, canvases):
    """resize=False: each image runs at its own size, images of one size in one batch."""
    big = torch.stack([ClutteredDigits("val", canvas_size=(150, 250), length=3)[i][0] for i in range(3)])
    images = [canvases[0], big[0], canvases[1], big[1], big[2], canvases[2]]
    res = gray(images, budget=BUDGET, resize=False)
    by_size = {128: [0, 2, 5], 150: [1, 3, 4]}
    for rows, batch in ((by_size[128], canvases[:3]), (by_size[150], big)):
        sub = type(res)([res[i] for i in rows], [0] * 3, res.exit_rule, res.step_macs)
        r = dynamic_inference(gray.model, batch, gray.calibration.point(BUDGET).thresholds)
        assert sub.class_indices == r.prediction.tolist() and sub.exit_steps == r.exit_step.tolist()
        assert torch.equal(sub.logits, r.logits)
    for p in res:
        assert p.model_size == p.image_size and p.boxes == p.model_boxes
        for x1, y1, x2, y2 in p.boxes:
            assert 0 <= x1 < x2 <= p.image_size[1] and 0 <= y1 < y2 <= p.image_size[0]
            assert (x2 - x1, y2 - y1) in ((gray.patch_size,) * 2, p.image_size[::-1])  # a patch, or the glance
    assert sum(res.exit_counts) == len(images)


def test_grayscale_into_rgb_model(rgb):
    g = torch.Generator().manual_seed(7)
    gray_images = torch.randint(0, 256, (6, 80, 112), generator=g, dtype=torch.uint8)
    res = rgb([x.numpy() for x in gray_images], budget=BUDGET, resize=False)
    _by_hand(rgb, gray_images[:, None].expand(-1, 3, -1, -1), res)
    assert [p.class_name for p in res] == [f"class {k}" for k in res.class_indices]


def test_rgb_into_grayscale_model(gray, canvases, tmp_path):
    g = torch.Generator().manual_seed(8)
    color = torch.randint(0, 256, (4, 3, 128, 128), generator=g, dtype=torch.uint8)
    res = gray(color, budget=BUDGET)
    w = torch.tensor([0.299, 0.587, 0.114])[:, None, None]
    luma = (color.float() * w).sum(1, keepdim=True).round().to(torch.uint8)  # ITU-R 601-2
    _by_hand(gray, luma, res)
    # PIL's own conversion (integer arithmetic) agrees to one grey level
    pil = np.asarray(Image.fromarray(color[0].permute(1, 2, 0).numpy()).convert("L"))
    assert np.abs(pil.astype(int) - luma[0, 0].numpy().astype(int)).max() <= 1
    # an RGB file into the grayscale model goes the same way
    Image.fromarray(color[1].permute(1, 2, 0).numpy()).save(tmp_path / "rgb.png")
    assert gray.preprocess(tmp_path / "rgb.png")[0].image.equal(luma[1])


def test_rgb_resized_non_square(rgb):
    """An RGB model at 80 x 112 evaluated ImageNet-style: images of any size and kind (PIL
    RGBA, palette, numpy HWC) are covered at 91 x 128 and centre-cropped to 80 x 112."""
    g = np.random.default_rng(9)
    a = g.integers(0, 256, (120, 300, 3), dtype=np.uint8)
    rgba = Image.fromarray(g.integers(0, 256, (200, 200, 4), dtype=np.uint8), "RGBA")
    palette = Image.fromarray(a).convert("P")
    res = rgb([a, rgba, palette], budget=BUDGET)
    chw = [torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in (a, rgba.convert("RGB"), palette.convert("RGB"))]
    expect = [eval_preprocess(x, (80, 112), 0.875, "bilinear")[0] for x in chw]
    _by_hand(rgb, torch.stack(expect), res)
    # 120 x 300 covers 91 x 128 at 91 x 227: the kept 80 x 112 window maps back into the image
    x1, y1, x2, y2 = res[0].boxes[0]
    assert (x1, y1, x2, y2) == pytest.approx((58 * 300 / 227, 6 * 120 / 91, 170 * 300 / 227, 86 * 120 / 91))
    assert all(p.model_size == (80, 112) for p in res)


# ---------------------------------------------------------------------- batching, exits, MACs
def test_batches_of_batch_size(gray, canvases):
    res = gray(canvases, budget=BUDGET, batch_size=5)
    thr = gray.calibration.point(BUDGET).thresholds
    parts = [dynamic_inference(gray.model, canvases[i:i + 5], thr) for i in range(0, 12, 5)]
    assert res.class_indices == torch.cat([r.prediction for r in parts]).tolist()
    assert res.exit_steps == torch.cat([r.exit_step for r in parts]).tolist()
    torch.testing.assert_close(res.logits, torch.cat([r.logits for r in parts]), rtol=0, atol=0)
    assert res.exit_counts == [sum(c) for c in zip(*(r.exit_counts for r in parts))]


def test_exit_rules_and_macs(gray, canvases):
    cal = gray.calibration
    macs = count_step_flops(gray.model, static=False).macs
    assert gray.step_macs == [float(m) for m in macs]
    res = gray(canvases, budget=BUDGET)
    assert res.exit_rule.thresholds == cal.point(BUDGET).thresholds and res.exit_rule.source == "budget 20"
    for p in res:
        assert p.macs == sum(macs[:p.exit_step])
    assert res.avg_macs == pytest.approx(average_macs(res.exit_counts, macs))
    assert gray(canvases).exit_rule.budget == 20  # calibrated: budget 20 unless asked
    # one threshold for every step, or T-1 of them
    assert gray(canvases, threshold=0.0).exit_steps == [1] * 12
    assert gray(canvases, threshold=[2.0, 2.0]).exit_steps == [3] * 12
    # target MACs: the calibrated budget with the most MACs not above the target
    p7 = cal.point(7)
    rule = gray.exit_rule(target_macs=p7.calib_avg_macs + 1)
    best = max((p for p in cal.points if p.calib_avg_macs <= p7.calib_avg_macs + 1), key=lambda p: p.calib_avg_macs)
    assert rule.thresholds == best.thresholds and rule.budget == best.budget
    assert gray(canvases, target_macs=p7.calib_avg_macs + 1).exit_rule == rule
    with pytest.raises(GFNetError, match="below the cheapest calibrated budget"):
        gray.exit_rule(target_macs=1.0)
    with pytest.raises(GFNetError, match="at most one of budget, threshold and target_macs"):
        gray(canvases, budget=3, threshold=0.5)
    with pytest.raises(GFNetError, match="out of range"):
        gray(canvases, budget=40)
    with pytest.raises(GFNetError, match="needs one number, 2 values"):
        gray(canvases, threshold=[0.5])
    assert gray(canvases, threshold=[2.0, 2.0, 0.5]).exit_steps == [3] * 12  # the last step's is ignored
    with pytest.raises(GFNetError, match="batch_size"):
        gray(canvases, batch_size=0)


def test_uncalibrated_checkpoint(tmp_path, canvases):
    cfg = build_config("digits", overrides=tiny_overrides())
    save_gfnet_checkpoint(tmp_path / "c.pt", cfg, build_model(cfg.model))
    p = gfnet.load(tmp_path / "c.pt")
    res = p(canvases[:3])
    assert res.exit_rule.thresholds is None and res.exit_steps == [3, 3, 3]  # all steps
    assert [x.class_name for x in res] == [str(k) for k in res.class_indices]  # the digits' own names
    with pytest.raises(CheckpointError, match="no calibrated exit thresholds"):
        p(canvases[:3], budget=5)
    with pytest.raises(CheckpointError, match="no calibrated exit thresholds"):
        p(canvases[:3], target_macs=1e7)


def test_class_names_from_a_file(gray, tmp_path):
    txt = tmp_path / "names.txt"
    txt.write_text("\n".join(f"digit {k}" for k in range(10)) + "\n\n")
    assert gfnet.load(gray.source, class_names=txt).class_names == [f"digit {k}" for k in range(10)]
    js = tmp_path / "names.json"
    js.write_text('{"0": ["n0", "zero"], ' + ", ".join(f'"{k}": ["n{k}", "d{k}"]' for k in range(1, 10)) + "}")
    assert gfnet.load(gray.source, class_names=js).class_names == ["zero"] + [f"d{k}" for k in range(1, 10)]
    (tmp_path / "short.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match=re.escape(f"{str(tmp_path / 'short.txt')!r} holds 2 names; the model has 10")):
        gfnet.load(gray.source, class_names=tmp_path / "short.txt")
    with pytest.raises(DataError, match="has 3 names; the model has 10 classes"):
        gfnet.load(gray.source, class_names=["a", "b", "c"])


def test_checkpoint_predating_the_eval_fields_takes_its_presets(tmp_path):
    cfg = build_config("digits", overrides=tiny_overrides())
    d = cfg.to_dict()
    del d["model"]["eval_crop_fraction"], d["model"]["eval_interpolation"]
    save_gfnet_checkpoint(tmp_path / "old.pt", d, build_model(cfg.model))
    m = gfnet.load(tmp_path / "old.pt").cfg.model
    assert (m.eval_crop_fraction, m.eval_interpolation) == (1.0, "bicubic")  # the digits preset's


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("case", ["unreadable", "missing", "folder", "empty_list", "empty_batch", "5d", "numpy_rgba",
                                  "tensor_2ch", "float_range", "int64", "smaller_than_patch", "object"])
def test_bad_input_names_it(gray, canvases, tmp_path, case):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    cases = {
        "unreadable": ([canvases[0], str(bad)], {}, f"cannot read image {str(bad)!r}"),
        "missing": ([str(tmp_path / "nope.jpg")], {}, f"image {str(tmp_path / 'nope.jpg')!r} does not exist"),
        "folder": ([tmp_path], {}, f"image {str(tmp_path)!r} is a folder"),
        "empty_list": ([], {}, "images is empty"),
        "empty_batch": (canvases[:0], {}, "images (tensor (0, 1, 128, 128) uint8) holds no images"),
        "5d": (canvases[None], {}, "images is a 5-D tensor (1, 12, 1, 128, 128) uint8; images are (H, W), "
                                   "(C, H, W) or (N, C, H, W)"),
        "numpy_rgba": ([canvases[0, 0].numpy(), np.zeros((64, 64, 4), np.uint8)], {},
                       "images[1] (numpy array (64, 64, 4) uint8) has 4 channels"),
        "tensor_2ch": ([canvases[0], torch.zeros(2, 64, 64)], {},
                       "images[1] (tensor (2, 64, 64) float32) has 2 channels"),
        "float_range": ([canvases[0].float()], {}, "images[0] (tensor (1, 128, 128) float32): floating-point images "
                                                  "hold values in [0, 1], this one spans [0, 255]"),
        "int64": ([canvases[0].long()], {}, "images[0] (tensor (1, 128, 128) int64): expected uint8 or floating"),
        "smaller_than_patch": ([canvases[0], canvases[1, :, :40, :]], {"resize": False},
                               "images[1] is 40 x 128 pixels, smaller than the model's 48 x 48 focus patch"),
        "object": ([canvases[0], {"not": "an image"}], {}, "images[1] is a dict; expected a file path"),
    }
    images, kw, message = cases[case]
    with pytest.raises(DataError, match=re.escape(message)):
        gray(images, **kw)


def test_not_a_checkpoint_is_named(tmp_path, gray):
    notes = tmp_path / "notes.pt"
    notes.write_text("hello")
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {str(notes)!r} is corrupt or not a gfnet")):
        gfnet.load(notes)
    with pytest.raises(CheckpointError, match="does not exist"):
        gfnet.load(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="holds no stage checkpoint"):
        gfnet.load(tmp_path)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {str(other)!r} is not a gfnet checkpoint")):
        gfnet.load(other)
    base = tmp_path / "baseline.pt"
    save_atomic({"format": FORMAT, "kind": "baseline", "config": gray.cfg.to_dict(), "model": {}}, base)
    with pytest.raises(CheckpointError, match="is a static baseline checkpoint"):
        gfnet.load(base)


def test_import_gfnet_stays_light():
    """``import gfnet`` loads neither the predictor nor torchvision, and loading a model for
    prediction never imports the trainer."""
    import subprocess
    import sys

    from .conftest import subprocess_env

    code = ("import sys, gfnet; "
            "a = {m for m in ('gfnet.predictor', 'torchvision', 'gfnet.train') if m in sys.modules}; "
            "gfnet.load; b = 'gfnet.train' in sys.modules; print(sorted(a), b)")
    out = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[] False"


# ---------------------------------------------------------------------- reliability (issue 21)
def test_model_stays_in_eval_mode_and_unchanged_after_calls(gray, canvases):
    """Counting MACs (fvcore wraps the modules) and running calls leave every module in eval
    mode and every buffer (BatchNorm statistics) as loaded."""
    predictor = gfnet.load(gray.source, device="cpu")  # MACs not counted yet
    before = {k: v.clone() for k, v in predictor.model.state_dict().items()}
    for _ in range(2):
        predictor(canvases[:4], budget=BUDGET)
    training = [name for name, m in predictor.model.named_modules() if m.training]
    assert training == []
    after = predictor.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_macs_counting_keeps_each_modules_mode(gray):
    """count_step_flops gives every module back its own mode (a model in training stays so)."""
    model = gfnet.load(gray.source, device="cpu").model
    model.train()
    model.global_encoder.eval()
    modes = {name: m.training for name, m in model.named_modules()}
    count_step_flops(model, static=False)
    assert {name: m.training for name, m in model.named_modules()} == modes


def test_four_threads_calling_one_predictor_get_the_answers_of_one_call(gray, canvases):
    """4 threads call one fresh predictor at once (the first calls count MACs meanwhile): every
    result equals what a predictor alone gives, and the model is unchanged afterwards."""
    import threading

    alone = gfnet.load(gray.source, device="cpu")(canvases, budget=BUDGET)
    shared = gfnet.load(gray.source, device="cpu")
    before = {k: v.clone() for k, v in shared.model.state_dict().items()}
    start = threading.Barrier(4)
    results, errors = [], []

    def work():
        try:
            start.wait()
            for _ in range(3):
                results.append(shared(canvases, budget=BUDGET))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 12
    for r in results:
        assert r.class_indices == alone.class_indices
        assert r.exit_steps == alone.exit_steps
        assert torch.equal(r.logits, alone.logits)
        assert [p.macs for p in r] == [p.macs for p in alone]
    assert not any(m.training for m in shared.model.modules())
    after = shared.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_16_bit_png_keeps_its_precision(gray, tmp_path):
    """A 16-bit grayscale PNG decodes to value / 65535 (float32), not clipped to 255, and the
    predictor gives what it gives for the same values as a float tensor."""
    values = np.array([[0, 257, 16448, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "row.png")
    from gfnet.data.preprocess import decode_image

    x = decode_image(tmp_path / "row.png")
    assert x.dtype == torch.float32 and x.shape == (1, 1, 5)
    assert torch.equal(x[0, 0], torch.tensor(values[0] / 65535.0, dtype=torch.float32))
    g = np.random.default_rng(0)
    image = (g.integers(0, 65536, (128, 128))).astype(np.uint16)
    Image.fromarray(image).save(tmp_path / "deep.png")
    from_file = gray(str(tmp_path / "deep.png"), budget=BUDGET)
    from_tensor = gray(torch.from_numpy(image.astype(np.float32) / 65535.0), budget=BUDGET)
    assert torch.equal(from_file.logits, from_tensor.logits)


def test_16_bit_values_beyond_16_bits_are_refused(tmp_path):
    from gfnet.data.preprocess import pil_to_tensor

    with pytest.raises(DataError, match="read as 16-bit"):
        pil_to_tensor(Image.fromarray(np.array([[0, 70000]], dtype=np.int32)))
    with pytest.raises(DataError, match=r"values in \[0, 1\]"):
        pil_to_tensor(Image.fromarray(np.array([[0.0, 2.0]], dtype=np.float32)))


def test_exif_orientation_is_applied(gray, tmp_path):
    """An image stored sideways with EXIF orientation 6 (turn 90 degrees clockwise to view) is
    decoded upright, in the predictor and through gfnet predict's decoding."""
    from gfnet.data.preprocess import decode_image

    g = np.random.default_rng(1)
    upright = g.integers(0, 256, (96, 128), dtype=np.uint8)
    stored = np.rot90(upright, 1)  # what a camera held sideways writes: (128, 96)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(stored)).save(tmp_path / "side.png", exif=exif)
    assert torch.equal(decode_image(tmp_path / "side.png")[0], torch.from_numpy(upright))
    with Image.open(tmp_path / "side.png") as im:
        r_pil = gray(im, budget=BUDGET)
    r_file = gray(str(tmp_path / "side.png"), budget=BUDGET)
    r_upright = gray(upright, budget=BUDGET)
    assert torch.equal(r_pil.logits, r_upright.logits)
    assert torch.equal(r_file.logits, r_upright.logits)
    assert r_file[0].image_size == (96, 128)


def test_animated_image_is_read_as_its_first_frame(tmp_path):
    from gfnet.data.preprocess import decode_image

    frames = [Image.fromarray(np.full((8, 8), v, dtype=np.uint8)) for v in (10, 200, 90)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    with Image.open(tmp_path / "a.gif") as im:
        im.seek(2)  # a PIL image left at another frame is read from its first too
        assert int(np.asarray(im.convert("L")).max()) != 10
        from gfnet.data.preprocess import pil_to_tensor

        assert int(pil_to_tensor(im).float().mean()) == 10
    assert int(decode_image(tmp_path / "a.gif").float().mean()) == 10
