"""Non-square images end to end: (H, W) configs, the shared evaluation preprocessing, ImageFolder
with and without the aspect ratio kept, a 96 x 160 digits run trained for a few steps that
predicts (on larger images too) and prints class names."""

from __future__ import annotations

import json
import re

import pytest
import torch
from gfnet.config import build_config
from gfnet.data import ClutteredDigits, build_datasets, eval_transform, read_image
from gfnet.data.preprocess import eval_geometry, eval_preprocess
from gfnet.errors import ConfigError
from gfnet.inference import dynamic_inference
from PIL import Image

from .conftest import make_image_folder

import gfnet

from .conftest import tiny_overrides


# ---------------------------------------------------------------------- config
@pytest.mark.parametrize("value, expect", [(128, 128), ("128", 128), ("96,160", (96, 160)), ("96x160", (96, 160)),
                                           ("(96, 160)", (96, 160)), ([96, 160], (96, 160))])
def test_image_size_is_an_int_or_height_width(value, expect):
    cfg = build_config("digits", overrides={"model.image_size": value})
    assert cfg.model.image_size == expect
    assert type(cfg).from_dict(cfg.to_dict()).model.image_size == expect  # survives a checkpoint


@pytest.mark.parametrize("value, message", [
    ("96,160,3", "bad value '96,160,3' for model.image_size (expected int | tuple[int, int])"),
    ("40,160", "image size 40 x 160 is smaller than the patch size 48"),
])
def test_bad_image_size(value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_config("digits", overrides={"model.image_size": value})


# ---------------------------------------------------------------------- the evaluation preprocessing
@pytest.mark.parametrize("hw", [(300, 400), (400, 300), (224, 224), (100, 90), (257, 256)])
@pytest.mark.parametrize("size, fraction, mode", [(224, 0.875, "bilinear"), (128, 1.0, "bicubic"),
                                                  (300, 0.904, "bicubic")])
def test_square_sizes_are_the_imagenet_convention(hw, size, fraction, mode):
    """For a square size the shared definition is torchvision's Resize(int(S / fraction)) of the
    shorter side, then CenterCrop(S)."""
    from torchvision.transforms import v2 as T

    g = torch.Generator().manual_seed(sum(hw) + size)
    x = torch.randint(0, 256, (3, *hw), generator=g, dtype=torch.uint8)
    interp = T.InterpolationMode.BICUBIC if mode == "bicubic" else T.InterpolationMode.BILINEAR
    tv = T.Compose([T.Resize(int(size / fraction), interpolation=interp, antialias=True), T.CenterCrop(size)])
    ours, geo = eval_preprocess(x, size, fraction, mode)
    assert torch.equal(ours, tv(x))
    assert geo.output_hw == (size, size) and min(geo.resized_hw) == int(size / fraction)


def test_non_square_cover_or_stretch():
    # a 200 x 400 image to 96 x 160 at crop fraction 0.8: cover 120 x 200 keeping the aspect
    # ratio (the height binds: 120 x 240), centre crop; or stretch to 120 x 200, centre crop
    keep = eval_geometry((200, 400), (96, 160), 0.8, keep_aspect=True)
    assert (keep.resized_hw, keep.top, keep.left) == ((120, 240), 12, 40)
    stretch = eval_geometry((200, 400), (96, 160), 0.8, keep_aspect=False)
    assert (stretch.resized_hw, stretch.top, stretch.left) == ((120, 200), 12, 20)
    box = torch.tensor([[0.0, 0.0, 160.0, 96.0]])  # the whole model input
    expect = [40 * 400 / 240, 12 * 200 / 120, 200 * 400 / 240, 108 * 200 / 120]
    assert keep.to_input(box)[0].tolist() == pytest.approx(expect)
    x = torch.rand(1, 200, 400)
    assert eval_preprocess(x, (96, 160), 0.8, "bicubic", keep_aspect=False)[0].shape == (1, 96, 160)
    y = eval_preprocess(x, (96, 160), 0.8, "bicubic")[0]
    assert y.shape == (1, 96, 160) and 0 <= float(y.min()) and float(y.max()) <= 1  # clamped after bicubic


@pytest.fixture
def image_folder(tmp_path):
    return make_image_folder(tmp_path / "data", size=lambda i: (70 + 10 * i, 90))


@pytest.mark.parametrize("keep_aspect", [True, False])
def test_imagefolder_non_square_trains_and_evaluates_as_predicted(image_folder, tmp_path, keep_aspect):
    """ImageFolder at 48 x 64: the validation images are exactly what read_image (the evaluation
    resize and crop the predictor applies too) makes of the files; one training step runs; the
    checkpoint stores the folder names."""
    from gfnet.train import train

    cfg = build_config("mobilenet_v3_large-p96", overrides=[
        f"data.root={image_folder}", "model.image_size=48,64", "model.patch_size=32", "model.num_classes=2",
        "optim.batch_size=4", "run.threads=1", "run.progress=false", f"data.keep_aspect={keep_aspect}",
        "data.num_workers=0",
        "optim.epochs_stage1=1", "run.max_train_batches=1", "run.max_eval_batches=1"])
    ds = build_datasets(cfg, ("train", "val"))
    assert ds["train"][0][0].shape == (3, 48, 64)
    m = cfg.model
    for i, (path, _label) in enumerate(ds["val"].samples):
        expect = read_image(path, 3, (48, 64), m.eval_crop_fraction, m.eval_interpolation, keep_aspect)
        assert torch.equal(ds["val"][i][0], expect), path
    train(cfg, tmp_path / "run", [1])
    ck = torch.load(tmp_path / "run" / "stage1.pt", weights_only=True)
    assert ck["class_names"] == ["cat", "dog"]
    assert gfnet.load(tmp_path / "run").class_names == ["cat", "dog"]


def test_eval_transform_is_the_shared_definition():
    x = torch.randint(0, 256, (3, 90, 70), dtype=torch.uint8)
    t = eval_transform((48, 64), 0.875, "bilinear")
    assert torch.equal(t(x), eval_preprocess(x, (48, 64), 0.875, "bilinear")[0])
    pil = Image.fromarray(x.permute(1, 2, 0).numpy())
    assert torch.equal(t(pil), t(x))


# ---------------------------------------------------------------------- a 96 x 160 digits run
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """The digits preset on a 96 x 160 canvas, every stage trained for a couple of steps, then
    evaluated (thresholds calibrated and stored)."""
    from gfnet.evaluate import evaluate_run
    from gfnet.train import train

    out = tmp_path_factory.mktemp("digits_96x160")
    cfg = build_config("digits", overrides=tiny_overrides(**{
        "model.image_size": "96,160", "optim.epochs_stage1": 1, "optim.epochs_stage2": 1,
        "optim.epochs_stage3": 1, "run.max_train_batches": 2}))
    train(cfg, out, [1, 2, 3])
    summary = evaluate_run(out, budgets=[1, 20, 39], simulate=True)
    return out, summary


def test_non_square_digits_run_trains_evaluates_and_predicts(digits_run):
    out, summary = digits_run
    assert summary["test_samples"] == 8
    from gfnet.flops import config_flops

    ck = torch.load(out / "stage3.pt", weights_only=True)
    assert ck["config"]["model"]["image_size"] == [96, 160]
    assert ck["class_names"] == [str(k) for k in range(10)]
    square = config_flops(build_config("digits", overrides=tiny_overrides()))
    wide = config_flops(build_config("digits", overrides=tiny_overrides(**{"model.image_size": "96,160"})))
    assert summary["static_macs"] == wide.static_macs  # the static baseline counted at 96 x 160
    assert wide.static_macs == pytest.approx(square.static_macs * 96 * 160 / 128 ** 2, rel=0.05)
    assert summary["step_macs"] == wide.macs == square.macs  # GFNet's steps are P x P at any size

    predictor = gfnet.load(out)
    assert predictor.image_size == (96, 160)
    ds = ClutteredDigits("test", canvas_size=(96, 160), length=6)
    images = torch.stack([ds[i][0] for i in range(6)])
    res = predictor([x.numpy()[0] for x in images], budget=20)
    r = dynamic_inference(predictor.model, images, predictor.calibration.point(20).thresholds)
    assert res.class_indices == r.prediction.tolist() and res.exit_steps == r.exit_step.tolist()
    assert torch.equal(res.logits, r.logits)
    assert [p.class_name for p in res] == [str(k) for k in res.class_indices]
    for p in res:
        assert p.image_size == p.model_size == (96, 160)
        assert p.boxes[0] == (0.0, 0.0, 160.0, 96.0)  # the glance: the whole canvas
        P = predictor.patch_size
        for x1, y1, x2, y2 in p.boxes[1:]:
            assert (x2 - x1, y2 - y1) == (P, P) and 0 <= x1 and x2 <= 160 and 0 <= y1 and y2 <= 96


@pytest.mark.parametrize("resize", [False, True])
def test_larger_images_than_trained_keep_boxes_inside(digits_run, resize):
    out, _ = digits_run
    predictor = gfnet.load(out)
    big = ClutteredDigits("test", canvas_size=(150, 300), length=4)
    images = [big[i][0] for i in range(4)]
    res = predictor(images, threshold=[2.0, 2.0], resize=resize)  # every image takes all 3 steps
    for p in res:
        assert p.image_size == (150, 300) and p.exit_step == 3
        assert p.model_size == ((96, 160) if resize else (150, 300))
        for x1, y1, x2, y2 in p.boxes:
            assert 0 <= x1 < x2 <= 300 and 0 <= y1 < y2 <= 150
    if resize:  # 150 x 300 covers 96 x 160 at 96 x 192: the kept window is 150 x 250 in the image
        assert res[0].boxes[0] == pytest.approx((16 * 300 / 192, 0.0, 176 * 300 / 192, 150.0))


def test_predict_command_prints_class_names(digits_run, tmp_path, capsys):
    from gfnet.cli import main

    out, _ = digits_run
    ds = ClutteredDigits("test", canvas_size=(96, 160), length=2)
    paths = []
    for i in range(2):
        paths.append(str(tmp_path / f"d{i}.png"))
        Image.fromarray(ds[i][0][0].numpy()).save(paths[-1])
    names = tmp_path / "names.json"
    names.write_text(json.dumps(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]))
    rc = main(["predict", str(out), *paths, "--out", str(tmp_path / "pics"), "--budget", "1",
               "--class-names", str(names)])
    text = capsys.readouterr().out
    assert rc == 0 and "thresholds: budget 1" in text
    lines = [ln for ln in text.splitlines() if "exit step" in ln]
    assert len(lines) == 2
    for line, path in zip(lines, paths):
        assert line.startswith(f"{path}: ") and re.search(r": (zero|one|two|three|four|five|six|seven|eight|nine) "
                                                          r"\(class \d\) confidence", line), line
    assert len(list((tmp_path / "pics").glob("*.png"))) == 2
    rc = main(["predict", str(out), paths[0], "--out", str(tmp_path / "pics"), "--class-names",
               str(tmp_path / "none.txt")])
    assert rc == 2 and "class names file" in capsys.readouterr().err


def test_resume_compatibility_of_sizes_and_new_fields():
    """A run resumes when its checkpoint predates a field, or names its size as S vs (S, S);
    a different size is refused."""
    from gfnet.checkpoint import check_compatible
    from gfnet.errors import CheckpointError

    cfg = build_config("digits", overrides=tiny_overrides())
    old = cfg.to_dict()
    del old["model"]["eval_crop_fraction"], old["model"]["eval_interpolation"]
    now = build_config("digits", overrides=tiny_overrides(**{"model.image_size": "128,128"})).to_dict()["model"]
    check_compatible({"config": old}, now, "stage1.pt")
    wide = build_config("digits", overrides=tiny_overrides(**{"model.image_size": "96,160"})).to_dict()["model"]
    with pytest.raises(CheckpointError, match=re.escape("image_size: checkpoint 128 vs config [96, 160]")):
        check_compatible({"config": old}, wide, "stage1.pt")
