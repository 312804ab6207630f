"""Official GFNet checkpoints: key translation, parity with the release's inference path, the
import command's errors, and every command on an imported checkpoint.

Checkpoints here are made by ``official_reference`` (random weights, the release's key names
and shapes, batch-norm statistics away from their defaults); its ``official_inference`` is an
independent model of the release's inference path. The released files themselves are not
available to the tests.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from gfnet.cli import main
from gfnet.errors import CheckpointError, GFNetError
from gfnet.official import OFFICIAL_ARCHS, preset_for
from gfnet.official.importer import convert
from gfnet.official.keys import classifier_keys, policy_keys, translate

from . import official_reference as ref
from .conftest import make_image_folder

RELEASED = {name: arch.released[0] for name, arch in OFFICIAL_ARCHS.items()}  # (P, T)


def test_reference_covers_every_official_architecture():
    assert set(ref.ARCHS) == set(OFFICIAL_ARCHS)


# ---------------------------------------------------------------------- parity
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OFFICIAL_ARCHS))
def test_imported_model_computes_the_official_inference_path(name):
    """Per-step logits of the imported model (our dynamic-engine building blocks, uint8 images,
    fused crop_resize) equal the release's inference path on the same images, within 1e-4 of
    the logits' scale, with the focus patches at the same pixels."""
    P, T = RELEASED[name]
    ck = ref.released_checkpoint(name, P, T, seed=3)  # encoders with DataParallel's 'module.'
    c = convert(ck)
    model = c.model.eval()
    assert c.config.preset == f"{OFFICIAL_ARCHS[name].preset}-p{P}" and model.max_steps == T
    size = c.config.model.image_size
    images = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(7))
    want, corners = ref.official_inference(name, ck, ref.normalise(images), P, T)
    from gfnet.inference import anytime_inference, dynamic_inference

    got = anytime_inference(model, images)
    scale = max(float(w.abs().max()) for w in want)
    assert scale > 0.1
    for t in range(T):
        err = float((got.logits[t] - want[t]).abs().max())
        assert err <= 1e-4 * scale, (name, t + 1, err, scale)
    for t in range(T - 1):  # boxes are (x1, y1, x2, y2); the release's corners (row, col)
        assert torch.equal(got.boxes[:, t + 1, [1, 0]].int(), corners[t]), (name, t + 2)
    assert len({tuple(c.flatten().tolist()) for c in corners}) > 1  # the policy moves
    # the dynamic engine, nobody exiting early, agrees with all-step inference
    dyn = dynamic_inference(model, images)
    torch.testing.assert_close(dyn.logits, got.logits[-1], rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("name", ["resnet50", "regnety_800m", "mobilenetv3_large_125"])
def test_train_py_format_imports_the_same_weights(name):
    """The official train.py's files (no model_name; 'policy' None after stage 1) need --arch
    and --patch-size and give the same model as the released format."""
    P, T = RELEASED[name]
    released = ref.released_checkpoint(name, P, T, seed=1, data_parallel=False)
    train_py = {k: released[k] for k in ("model_state_dict", "model_prime_state_dict", "fc", "policy")}
    train_py.update(epoch=3, acc=51.0, best_acc=52.0, optimizer={"state": {}, "param_groups": []},
                    ppo_optimizer=None)
    a, b = convert(released), convert(train_py, arch=name, patch_size=P)
    assert b.stage == 3 and b.official["format"] == "train.py" and b.official["best_acc"] == 52.0
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(CheckpointError, match="pass --arch"):
        convert(train_py)
    with pytest.raises(CheckpointError, match="no patch_size"):
        convert(train_py, arch=name)
    stage1 = dict(train_py, policy=None)
    c = convert(stage1, arch=name, patch_size=P)
    assert c.stage == 1 and "policy starts untrained" in c.notes[0]


# ---------------------------------------------------------------------- the key table
def test_key_rules_name_by_name():
    """The translation of one key of each kind, spelled out (keys.py's table)."""
    def one(layout, field, key, shape=(1,)):
        parts = {f: {} for f in ("model_prime_state_dict", "model_state_dict", "fc", "policy")}
        parts[field] = {key: torch.zeros(shape)}
        mapped, unknown, _ = translate(parts, layout, 5)
        assert not unknown, unknown
        return next(iter(mapped))

    enc = "model_prime_state_dict"
    assert one("resnet", enc, "layer3.0.downsample.1.running_var") == "global_encoder.body.6.0.downsample.1.running_var"
    assert one("resnet", "model_state_dict", "fc.weight") == "local_encoder.head.weight"
    assert one("densenet", enc, "features.denseblock2.denselayer3.norm1.weight") == \
        "global_encoder.body.denseblock2.denselayer3.norm1.weight"
    assert one("regnet", enc, "s2.b1.f.se.f_ex.0.weight") == "global_encoder.body.1.block2.block2-0.f.se.fc1.weight"
    assert one("regnet", enc, "s3.b4.f.b_bn.running_mean") == "global_encoder.body.1.block3.block3-3.f.b.1.running_mean"
    assert one("regnet", enc, "s1.b1.bn.weight") == "global_encoder.body.1.block1.block1-0.proj.1.weight"
    assert one("mobilenetv3", enc, "conv_head.weight") == "global_encoder.neck.0.weight"
    assert one("efficientnet", enc, "conv_stem.weight") == "global_encoder.body.0.0.weight"
    fc, dropped = classifier_keys({"rnn.weight_hh_l0": 0, "fc.bias": 0, "fc_3.weight": 0, "fc_5.weight": 0}, 4)
    assert fc == {"rnn.weight_hh_l0": "classifier.gru.weight_hh", "fc.bias": "classifier.heads.0.bias",
                  "fc_3.weight": "classifier.heads.1.weight"} and dropped == ["fc_5.weight"]
    conv = {"state_encoder.0.weight": torch.zeros(32, 8, 1, 1), "state_encoder.3.bias": torch.zeros(4),
            "gru.bias_ih_l0": torch.zeros(3), "actor.0.weight": torch.zeros(2, 4), "critic.0.bias": torch.zeros(1)}
    assert policy_keys(conv) == {"state_encoder.0.weight": "policy.encoder.0.weight",
                                 "state_encoder.3.bias": "policy.encoder.3.bias",
                                 "gru.bias_ih_l0": "policy.gru.bias_ih",
                                 "actor.0.weight": "policy.actor.weight", "critic.0.bias": "policy.critic.bias"}
    mlp = {"state_encoder.0.weight": torch.zeros(4, 8), "state_encoder.2.weight": torch.zeros(4, 4)}
    assert policy_keys(mlp) == {"state_encoder.0.weight": "policy.encoder.1.weight",
                                "state_encoder.2.weight": "policy.encoder.3.weight"}


def test_gen_efficientnet_blocks_by_type():
    """gen-efficientnet block layers land in torchvision's block.<i> by block type, SE or not."""
    sd = ref.official_state_dicts("mobilenetv3_large_100", 96)["model_state_dict"]
    parts = {"model_prime_state_dict": {}, "model_state_dict": sd, "fc": {}, "policy": {}}
    mapped, unknown, _ = translate(parts, "mobilenetv3", 3)
    by_official = {v[0].split(":", 1)[1]: k for k, v in mapped.items()}
    assert not unknown
    assert by_official["blocks.0.0.conv_pw.weight"] == "local_encoder.body.1.block.1.0.weight"  # ds, no SE
    assert by_official["blocks.1.0.conv_pwl.weight"] == "local_encoder.body.2.block.2.0.weight"  # ir, no SE
    assert by_official["blocks.2.0.se.conv_expand.bias"] == "local_encoder.body.4.block.2.fc2.bias"
    assert by_official["blocks.2.0.bn3.running_var"] == "local_encoder.body.4.block.3.1.running_var"  # ir + SE
    assert by_official["blocks.6.0.conv.weight"] == "local_encoder.body.16.0.weight"  # the 1x1 conv block
    assert by_official["classifier.weight"] == "local_encoder.head.weight"


def test_official_variants_differ_from_torchvision_where_the_release_does():
    from gfnet.models.backbones import build_backbone

    tv = build_backbone("regnet_y_800mf", num_classes=10)
    off = build_backbone("regnet_y_800mf_official", num_classes=10)
    widths = lambda b: [s[0].proj[0].out_channels for s in b.body[1].children()]  # noqa: E731
    assert widths(off) == [64, 128, 320, 768] and widths(tv) == [64, 144, 320, 784]
    m1 = build_backbone("mobilenet_v3_large_official", num_classes=10)
    bn = next(m for m in m1.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert (bn.eps, bn.momentum) == (1e-5, 0.1)
    m125 = build_backbone("mobilenet_v3_large_125_official", num_classes=10)
    assert m125.fmap_channels == 1200 and m125.feature_dim == 1280  # the head stays 1280 wide
    assert m125.body[8].block[0][0].out_channels == 264  # make_divisible(104 * 2.5), torchvision: 248


# ---------------------------------------------------------------------- presets and options
@pytest.mark.parametrize("name", sorted(OFFICIAL_ARCHS))
def test_every_official_architecture_has_its_presets(name):
    from gfnet.config import get_preset

    for p, t in OFFICIAL_ARCHS[name].released:
        preset, extra = preset_for(name, p)
        assert not extra
        m = get_preset(preset).model
        assert (m.patch_size, m.max_steps) == (p, t)
        if m.classifier == "gru":
            assert m.classifier_shared_head and m.glance_from_head == (OFFICIAL_ARCHS[name].layout == "regnet")
        if m.policy_state == "mlp":
            assert m.policy_mlp_width == 2048
        else:
            assert not m.policy_conv_bias
    assert preset_for(name, 112) == (f"{OFFICIAL_ARCHS[name].preset}-p{OFFICIAL_ARCHS[name].released[0][0]}",
                                     {"model.patch_size": 112})


def test_official_recipe_defaults_and_switches():
    from gfnet.config import build_config, get_preset
    from gfnet.train.stages import trained_parts

    mob, res = get_preset("mobilenet_v3_large-p96"), get_preset("resnet50-p96")
    assert mob.optim.epochs_stage2 == res.optim.epochs_stage2 == 15
    assert trained_parts(mob, 3) == ("local_encoder", "classifier")  # global encoder frozen
    assert trained_parts(res, 3) == ("global_encoder", "local_encoder", "classifier")
    assert res.optim.stage3_actions == "sample" and res.ppo.clamp_actions
    eff = get_preset("efficientnet_b3-p144").model
    assert (eff.eval_crop_fraction, eff.eval_interpolation) == (0.904, "bicubic")
    assert get_preset("efficientnet_b2-p128").model.eval_crop_fraction == 0.875
    cfg = build_config("resnet50-p96", overrides=["optim.stage3_actions=mean", "ppo.clamp_actions=false"])
    assert cfg.optim.stage3_actions == "mean" and not cfg.ppo.clamp_actions
    with pytest.raises(Exception, match="stage3_actions"):
        build_config("resnet50-p96", overrides=["optim.stage3_actions=random"])


def test_sampled_actions_are_clamped_before_their_log_probability():
    from gfnet.models.policy import ActorCritic

    pol = ActorCritic((4, 2, 2), state="conv", conv_channels=4, conv_bias=False, hidden=8, action_std=2.0)
    fmap, h = torch.randn(64, 4, 2, 2), pol.init_hidden(64)
    g = torch.Generator().manual_seed(0)
    a, logp, _v, _h = pol.act(fmap, h, "sample", g)
    mean, _, _ = pol(fmap, h)
    assert a.min() >= 0 and a.max() <= 1 and ((a == 0) | (a == 1)).any()
    torch.testing.assert_close(logp, pol.log_prob(mean, a))
    pol.clamp_samples = False
    a2, logp2, _v, _h = pol.act(fmap, h, "sample", torch.Generator().manual_seed(0))
    assert a2.min() < 0 or a2.max() > 1
    torch.testing.assert_close(a2.clamp(0, 1), a)
    assert pol.encoder[0].bias is None


# ---------------------------------------------------------------------- the command
def _save_official(path, name="mobilenetv3_large_100", **change):
    P, T = RELEASED[name]
    ck = ref.released_checkpoint(name, P, T, seed=2)
    ck.update(change)
    torch.save(ck, path)
    return ck


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A released-format MobileNet-V3 checkpoint, imported through the command line."""
    d = tmp_path_factory.mktemp("official")
    ck = _save_official(d / "gf_mbv3_96.pth.tar")
    assert main(["import-official", str(d / "gf_mbv3_96.pth.tar"), "--out", str(d / "imported.pt")]) == 0
    return d / "imported.pt", ck


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("imnet"), classes=("n01", "n02"),
                             size=lambda i: (150 + 10 * i, 200), ext="jpg")


def test_import_writes_a_gfnet_checkpoint_with_the_official_thresholds(imported):
    from gfnet.exits import stored_calibration
    from gfnet.flops import count_step_flops
    from gfnet.checkpoint import load_checkpoint_model

    path, ck = imported
    model, cfg, saved = load_checkpoint_model(path)
    assert cfg.preset == "mobilenet_v3_large-p96" and saved["kind"] == "gfnet" and saved["done"]
    off = saved["official"]
    assert off["model_name"] == "mobilenetv3_large_100" and off["format"] == "released"
    assert off["flops"] == pytest.approx(ck["flops"]) and off["anytime_classification"] == ck["anytime_classification"]
    cal = stored_calibration(saved)
    assert cal.split == "official" and len(cal.points) == 39
    thr = ck["dynamic_threshold"]
    assert cal.point(1).thresholds[0] == math.inf  # the release's 1e8: nobody exits
    assert cal.point(20).thresholds == pytest.approx(thr[19, :2].tolist())
    assert cal.step_macs == [float(m) for m in count_step_flops(model, static=False).macs]


def test_import_output_is_no_different_from_converting(imported):
    """The command's output holds exactly the converted model (what the parity test checks)."""
    path, ck = imported
    saved = torch.load(path, weights_only=True)["model"]
    want = convert(ck).model.state_dict()
    assert saved.keys() == want.keys() and all(torch.equal(saved[k], want[k]) for k in want)


def test_eval_and_predict_use_the_official_thresholds(imported, image_folder, tmp_path, capsys):
    path, ck = imported
    out = tmp_path / "ev"
    rc = main(["eval", str(path), "--data", str(image_folder), "--out", str(out), "--budgets", "1,20,39",
               "--no-store"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "using the thresholds stored" in text and "the release's dynamic_threshold" in text
    assert "official" in text and "ours cum. MACs" in text
    summary = json.loads((out / "eval.json").read_text())
    assert summary["calibration_split"] == "official" and summary["test_samples"] == 6
    rows = summary["official"]["per_step"]
    assert [r["official_cum_macs"] for r in rows] == pytest.approx([m * 1e6 for m in ck["flops"]])
    assert [r["official_accuracy"] for r in rows] == pytest.approx([a / 100 for a in ck["anytime_classification"]])
    thr20 = ck["dynamic_threshold"][19, :2].tolist()
    assert summary["budgets"][1]["thresholds"] == pytest.approx(thr20)
    # predict --budget k uses the same thresholds
    img = next((image_folder / "val" / "n01").iterdir())
    rc = main(["predict", str(path), str(img), "--budget", "20", "--out", str(tmp_path / "pred")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "thresholds: budget 20" in text and "exit step" in text


def test_recalibration_never_uses_the_test_images(imported, image_folder, tmp_path, capsys):
    path, _ = imported
    rc = main(["eval", str(path), "--data", str(image_folder), "--out", str(tmp_path / "ev"), "--budgets", "20",
               "--recalibrate", "--no-store"])
    assert rc == 0
    assert "random training images" in capsys.readouterr().out
    summary = json.loads((tmp_path / "ev" / "eval.json").read_text())
    cal = summary["calibration"]
    assert cal["split"] == "train" and cal["samples"] == 6 and cal["augment"]
    # val/ is also the test split here: calibrating on it is refused, in one line
    from gfnet import checkpoint as ck_io

    ck = ck_io.load(path)
    ck["config"]["data"]["calibration"] = "val"
    bad = tmp_path / "val_calibration.pt"
    ck_io.save_atomic(ck, bad)
    rc = main(["eval", str(bad), "--data", str(image_folder), "--out", str(tmp_path / "ev2"), "--recalibrate"])
    err = capsys.readouterr().err
    assert rc == 2 and "val split is the test split" in err and "Traceback" not in err


def test_load_predicts_with_the_official_thresholds(tmp_path):
    """gfnet.load on an imported official checkpoint gives a Predictor whose predictions are the
    dynamic engine's, run by hand on the same images prepared with the model's evaluation
    preprocessing, with the release's thresholds of the budget asked (1e8: nobody exits)."""
    import gfnet
    from gfnet.data.preprocess import eval_preprocess
    from gfnet.inference import anytime_inference, dynamic_inference

    name = "mobilenetv3_large_100"
    P, T = RELEASED[name]
    ck = ref.released_checkpoint(name, P, T, seed=4)
    g = torch.Generator().manual_seed(11)
    images = [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
              for h, w in [(240, 320), (300, 260), (224, 224), (256, 400)] * 3]
    batch = torch.stack([eval_preprocess(x, 224, 0.875, "bilinear")[0] for x in images])  # the preset's
    # the release's thresholds, made to split these images between the steps (budget b: the
    # (1 - b / 40) quantile of each step's confidence); budget 1's first step keeps its 1e8
    conf = anytime_inference(convert(ck).model.eval(), batch).logits.softmax(-1).amax(-1)  # (T, N)
    thr = torch.full((39, T), -1e8)
    for b in range(1, 40):
        thr[b - 1, :-1] = torch.quantile(conf[:-1].double(), 1 - b / 40, dim=1).float()
    thr[0, 0] = 1e8
    ck["dynamic_threshold"] = thr
    src, out = tmp_path / "official.pth", tmp_path / "imported.pt"
    torch.save(ck, src)
    assert main(["import-official", str(src), "--out", str(out)]) == 0

    predictor = gfnet.load(out, device="cpu")
    assert predictor.calibration.split == "official" and predictor.exit_rule().budget == 20
    for budget in (1, 20, 39, None):  # None: the default, budget 20
        want = [math.inf if t >= 1e7 else float(t) for t in thr[(budget or 20) - 1, :T - 1]]
        assert predictor.exit_rule(budget=budget).thresholds == pytest.approx(want)
        r = dynamic_inference(predictor.model, batch, want)
        res = predictor(images, budget=budget)
        assert res.class_indices == r.prediction.tolist() and res.exit_steps == r.exit_step.tolist()
        assert torch.equal(res.logits, r.logits.float()) and res.exit_counts == r.exit_counts
        for i, p in enumerate(res):
            assert p.model_boxes == [tuple(b) for b in r.boxes[i, :p.exit_step].tolist()]
            assert p.class_name == str(p.class_index)  # no names given: indices
        if budget == 1:
            assert 1 not in res.exit_steps  # the release's 1e8 at step 1: nobody exits there
        if budget == 20:
            assert len(set(res.exit_steps)) > 1, res.exit_steps
    with pytest.raises(GFNetError, match="carry no average MACs"):
        predictor(images[:1], target_macs=1e8)


def test_import_stores_class_names(tmp_path, capsys):
    """--class-names FILE: read as gfnet predict reads names (a text file, or a JSON list / index
    file), one per class, stored in the checkpoint; gfnet.load and gfnet predict name classes
    with them. A file with the wrong count is a one-line error and nothing is written."""
    import gfnet

    src = tmp_path / "official.pth"
    _save_official(src)
    names = [f"thing {k}" for k in range(1000)]
    txt, index = tmp_path / "names.txt", tmp_path / "index.json"
    txt.write_text("\n".join(names) + "\n")
    index.write_text(json.dumps({str(k): [f"n{k:08d}", n] for k, n in enumerate(names)}))
    for i, names_file in enumerate((txt, index)):
        out = tmp_path / f"named{i}.pt"
        assert main(["import-official", str(src), "--out", str(out), "--class-names", str(names_file)]) == 0
        assert "class names: 1000 stored" in capsys.readouterr().out
        assert torch.load(out, weights_only=True)["class_names"] == names
    predictor = gfnet.load(out, device="cpu")
    image = torch.randint(0, 256, (3, 230, 250), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    p = predictor(image, budget=20)[0]
    assert predictor.class_names == names and p.class_name == names[p.class_index]
    png = tmp_path / "photo.png"
    from PIL import Image

    Image.fromarray(image.permute(1, 2, 0).numpy()).save(png)
    assert main(["predict", str(out), str(png), "--out", str(tmp_path / "pred")]) == 0
    assert f"{names[p.class_index]} (class {p.class_index})" in capsys.readouterr().out

    short = tmp_path / "short.txt"
    short.write_text("cat\ndog\n")
    bad = tmp_path / "bad"
    bad.mkdir()
    rc = main(["import-official", str(src), "--out", str(bad / "x.pt"), "--class-names", str(short)])
    err = capsys.readouterr().err
    assert rc == 2 and "holds 2 names; the model has 1000 classes" in err, err
    assert len(err.strip().splitlines()) == 1 and list(bad.iterdir()) == []


def test_import_without_class_names_names_classes_by_index(imported, capsys):
    import gfnet

    path, _ = imported
    assert torch.load(path, weights_only=True)["class_names"] is None
    predictor = gfnet.load(path, device="cpu")
    p = predictor(torch.zeros(3, 224, 224, dtype=torch.uint8))[0]
    assert predictor.class_names is None and p.class_name == str(p.class_index)


def test_flops_shows_the_official_figures(imported, capsys):
    path, ck = imported
    assert main(["flops", "--checkpoint", str(path)]) == 0
    text = capsys.readouterr().out
    assert "official" in text and "read as M" in text
    assert f"{ck['flops'][0]:.1f}" in text


@pytest.mark.slow
def test_fine_tune_from_an_imported_checkpoint(imported, image_folder, tmp_path, capsys):
    """Stage 3 starts from the imported weights (no stage-2 file needed): the policy and, for
    MobileNet, the global encoder stay frozen; the local encoder learns. The folder's other
    classes (2, not ImageNet's 1000) give fresh class heads, and the frozen global encoder's own
    head (the glance's classifier) learns with them, or the glance would stay at chance."""
    from gfnet.checkpoint import checkpoint_config
    from gfnet.models import build_model

    path, _ = imported
    out = tmp_path / "ft"
    assert main(["train", "--preset", "mobilenet_v3_large-p96", "--data", str(image_folder), "--stage", "3",
                 "--epochs", "1", "--batch-size", "2", "--no-progress", "--init-from", str(path),
                 "--set", "data.num_workers=0", "--set", "run.threads=1", "--set", "run.max_train_batches=1",
                 "--set", "run.max_eval_batches=1", "--out", str(out)]) == 0
    assert "class heads start fresh" in capsys.readouterr().err
    before = torch.load(path, weights_only=True)["model"]
    ck = torch.load(out / "stage3.pt", weights_only=True)
    after = ck["model"]
    # the imported checkpoint's normalisation, not the folder's: its weights were trained with it
    assert ck["config"]["model"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert ck["fresh_heads"] == ["classifier.heads.0", "classifier.heads.1", "global_encoder.head",
                                 "local_encoder.head"]

    def same(prefix, skip="\0"):
        return all(torch.equal(before[k], after[k]) for k in before
                   if k.startswith(prefix) and not k.startswith(skip))

    assert same("policy.") and same("global_encoder.", skip="global_encoder.head.")
    assert not same("local_encoder.", skip="local_encoder.head.")
    assert after["classifier.heads.0.weight"].shape[0] == 2
    cfg = checkpoint_config(ck, out / "stage3.pt")
    torch.manual_seed(cfg.run.seed)  # the trainer's fresh model: the head's starting weights
    start = build_model(cfg.model).state_dict()
    assert not torch.equal(after["global_encoder.head.weight"], start["global_encoder.head.weight"])


def _write_baseline_like(gfnet_checkpoint, path):
    """A finished static-baseline checkpoint with an imported GFNet model's settings (ImageNet's
    1000 classes): training one needs ImageNet, since `gfnet train --baseline` refuses a folder
    whose class count differs from the model's, as the 2-class test folder does. Its weights
    are the fresh ones of the same seed; its stored test accuracy is made up (the report only
    reads it)."""
    from gfnet import checkpoint as ck_io
    from gfnet.flops import static_macs
    from gfnet.models.static import build_static_baseline

    ck = ck_io.load(gfnet_checkpoint)
    cfg = ck_io.checkpoint_config(ck, gfnet_checkpoint)
    torch.manual_seed(0)
    model = build_static_baseline(cfg.model).eval()
    ck_io.save_atomic({"format": ck_io.FORMAT, "kind": "baseline", "stage": 0, "epoch": 1, "epochs": 1,
                       "done": True, "config": cfg.to_dict(), "model": model.state_dict(),
                       "test": {"static": [0.5]}, "test_accuracy": 0.5,
                       "macs": static_macs(model.backbone, cfg.model)}, path)


@pytest.mark.slow
def test_report_runs_on_an_imported_checkpoint(image_folder, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    src = tmp_path / "official.pth"
    _save_official(src)
    assert main(["import-official", str(src), "--out", str(run / "stage3.pt"), "--data", str(image_folder)]) == 0
    _write_baseline_like(run / "stage3.pt", run / "baseline.pt")
    assert main(["eval", str(run), "--data", str(image_folder), "--budgets", "5,20", "--simulate",
                 "--baseline", str(run / "baseline.pt")]) == 0
    rc = main(["report", str(run), "--images", "1", "--passes", "1", "--batch-sizes", "2", "--max-images", "4"])
    assert rc == 0 and (run / "report.md").is_file()
    assert "thresholds set on the release's dynamic_threshold;" in (run / "report.md").read_text()
    capsys.readouterr()


# ---------------------------------------------------------------------- bad input
def _truncated(path, tmp_path):
    _save_official(tmp_path / "whole.pth")
    data = (tmp_path / "whole.pth").read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _missing_key(path, tmp_path):
    P, T = RELEASED["mobilenetv3_large_100"]
    ck = ref.released_checkpoint("mobilenetv3_large_100", P, T)
    del ck["model_state_dict"]["module.blocks.3.1.bn2.running_var"]
    torch.save(ck, path)


def _shape_mismatch(path, tmp_path):
    P, T = RELEASED["mobilenetv3_large_100"]
    ck = ref.released_checkpoint("mobilenetv3_large_100", P, T)
    ck["fc"]["fc_2.weight"] = torch.zeros(1000, 7)
    torch.save(ck, path)


@pytest.mark.parametrize("make, extra, message", [
    (lambda p, t: torch.save({"weights": torch.zeros(3)}, p), [], "not an official GFNet checkpoint: no"),
    (lambda p, t: torch.save(torch.zeros(3), p), [], "not a dict"),
    (lambda p, t: p.write_text("hello"), [], "corrupt, truncated or not a PyTorch file"),
    (_truncated, [], "corrupt"),
    (lambda p, t: _save_official(p, model_name="vgg16"), [], "unknown official model_name 'vgg16'"),
    (_missing_key, [], "1 missing key(s): local_encoder.body.8.block.1.1.running_var"),
    (_shape_mismatch, [], "shape mismatch at fc:fc_2.weight"),
    (lambda p, t: _save_official(p, dynamic_threshold=torch.zeros(39, 2)), [], "dynamic_threshold has shape (39, 2)"),
    (lambda p, t: _save_official(p), ["--arch", "resnet50"], "contradicts"),
])
def test_bad_files_are_one_line_errors_and_write_nothing(tmp_path, capsys, make, extra, message):
    src, out = tmp_path / "in.pth", tmp_path / "out" / "x.pt"
    out.parent.mkdir()
    make(src, tmp_path)
    rc = main(["import-official", str(src), "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert list(out.parent.iterdir()) == []  # no output, no temp file


def test_python_objects_need_allow_pickle(tmp_path, capsys):
    src, out = tmp_path / "np.pth", tmp_path / "x.pt"
    ck = _save_official(src)
    ck["flops"] = np.asarray(ck["flops"])  # numpy values: not loadable with weights_only
    torch.save(ck, src)
    assert main(["import-official", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "pass --allow-pickle" in err and len(err.strip().splitlines()) == 1 and not out.exists()
    assert main(["import-official", str(src), "--out", str(out), "--allow-pickle"]) == 0
    assert torch.load(out, weights_only=True)["official"]["flops"] == pytest.approx(ck["flops"].tolist())


def test_existing_output_is_kept_without_force(imported, tmp_path, capsys):
    path, _ = imported
    src = tmp_path / "in.pth"
    _save_official(src)
    out = tmp_path / "x.pt"
    out.write_bytes(b"keep me")
    assert main(["import-official", str(src), "--out", str(out)]) == 2
    assert "pass --force" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert main(["import-official", str(src), "--out", str(out), "--force"]) == 0


def test_a_static_baseline_starts_stage_1_only(tmp_path):
    from gfnet import checkpoint as ck_io
    from gfnet.train.warm_start import warm_start

    path = tmp_path / "baseline.pt"
    ck_io.save_atomic({"format": ck_io.FORMAT, "kind": "baseline", "config": {}, "model": {}}, path)
    with pytest.raises(CheckpointError, match="stage 1 only"):
        warm_start(torch.nn.Linear(1, 1), path, {}, stage=3)


def test_flops_of_an_official_preset_names_the_release(capsys):
    assert main(["flops", "--preset", "mobilenet_v3_large-p96"]) == 0
    text = capsys.readouterr().out
    assert "official model: mobilenetv3_large_100" in text and "~45 M MACs" in text


def test_a_checkpoint_from_before_the_official_options_loads_as_trained(tmp_path):
    """A paper-preset checkpoint written before the official model options existed holds the
    network it was trained as (one head per GRU step, the glance through the GRU, a biased
    policy conv): it loads as that network, not as the official variant its preset now builds."""
    from gfnet.checkpoint import FORMAT, load_checkpoint_model, save_atomic
    from gfnet.config import build_config
    from gfnet.models import build_model

    new = ("classifier_shared_head", "glance_from_head", "policy_conv_bias")
    cfg = build_config("regnet_y_600mf-p96", overrides=["model.classifier_shared_head=false",
                                                        "model.glance_from_head=false",
                                                        "model.policy_conv_bias=true"])
    model = build_model(cfg.model)
    old = cfg.to_dict()
    for k in new:
        del old["model"][k]
    save_atomic({"format": FORMAT, "kind": "gfnet", "stage": 3, "done": True, "config": old,
                 "model": model.state_dict()}, tmp_path / "stage3.pt")
    loaded, lcfg, _ = load_checkpoint_model(tmp_path / "stage3.pt")
    assert [getattr(lcfg.model, k) for k in new] == [False, False, True]
    assert len(loaded.classifier.heads) == 5 and loaded.policy.encoder[0].bias is not None
    assert lcfg.model.policy_state == "conv" and lcfg.model.glance_mode == "bilinear"  # the rest: as saved
