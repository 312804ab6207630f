from __future__ import annotations

import pytest

from gfnet.config import Config, build_config, get_preset, list_presets, parse_overrides
from gfnet.errors import ConfigError

PAPER = {
    "resnet50-p96": (96, 5, 224), "resnet50-p128": (128, 5, 224), "densenet121-p96": (96, 5, 224),
    "densenet169-p96": (96, 5, 224), "densenet201-p96": (96, 5, 224),
    "regnet_y_600mf-p96": (96, 5, 224), "regnet_y_800mf-p96": (96, 5, 224),
    "regnet_y_1_6gf-p96": (96, 5, 224), "mobilenet_v3_large-p96": (96, 3, 224),
    "mobilenet_v3_large-p128": (128, 3, 224), "mobilenet_v3_large_125-p128": (128, 3, 224),
    "efficientnet_b2-p128": (128, 4, 260), "efficientnet_b3-p128": (128, 4, 300),
    "efficientnet_b3-p144": (144, 4, 300),
}


def test_presets_cover_the_paper():
    # small: a user's first run on a CPU
    assert set(PAPER) | {"digits", "small"} == set(list_presets())
    for name, (p, t, img) in PAPER.items():
        m = get_preset(name).model
        assert (m.patch_size, m.max_steps, m.image_size) == (p, t, img), name


def test_family_settings():
    assert get_preset("densenet121-p96").model.glance_mode == "bilinear"
    assert get_preset("regnet_y_800mf-p96").model.glance_mode == "bilinear"
    assert get_preset("resnet50-p96").model.glance_mode == "bicubic"
    mob = get_preset("mobilenet_v3_large-p96")
    assert mob.model.classifier == "concat" and mob.model.policy_state == "conv"
    assert mob.optim.head_loss_weight == 5 and mob.optim.freeze_global_stage1
    res = get_preset("resnet50-p96")
    assert res.model.classifier == "gru" and res.model.policy_state == "mlp"
    assert res.model.classifier_hidden == 1024 and res.ppo.gamma == 0.7 and res.ppo.clip == 0.2
    assert get_preset("regnet_y_600mf-p96").optim.weight_decay == 5e-5
    assert res.model.policy_mlp_width == 2048 and res.model.classifier_shared_head  # as the official code
    assert get_preset("regnet_y_800mf-p96").model.backbone == "regnet_y_800mf_official"
    assert mob.model.backbone == "mobilenet_v3_large_official" and mob.optim.freeze_global_stage3


def test_digits_keeps_its_own_recipe():
    d = get_preset("digits")
    assert d.optim.stage3_actions == "mean" and not d.ppo.clamp_actions
    assert not d.model.classifier_shared_head and d.model.policy_conv_bias
    assert (d.model.eval_crop_fraction, d.model.eval_interpolation) == (1.0, "bicubic")


def test_overrides_dotted_bare_and_typed():
    cfg = build_config("digits", overrides=["model.patch_size=40", "gamma=0.5", "mean=[0.2]",
                                            "run.progress=false", "data.root=/x"])
    assert cfg.model.patch_size == 40 and cfg.ppo.gamma == 0.5
    assert cfg.model.mean == (0.2,) and cfg.run.progress is False and cfg.data.root == "/x"


def test_yaml_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("preset: digits\nmodel:\n  max_steps: 3\noptim:\n  batch_size: 16\n")
    cfg = build_config(None, str(f), ["optim.batch_size=32"])
    assert cfg.preset == "digits" and cfg.model.max_steps == 3 and cfg.optim.batch_size == 32


def test_roundtrip_dict():
    cfg = get_preset("efficientnet_b3-p144")
    assert Config.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


@pytest.mark.parametrize("bad, msg", [
    (["nope=1"], "unknown config key"),
    (["model.patch_size=abc"], "bad value"),
    (["model.backbone=vgg99"], "unknown backbone"),
    (["model.image_size=16"], "smaller than the patch"),
    (["model.mean=[0.1,0.2]"], "mean/std"),
])
def test_bad_overrides(bad, msg):
    with pytest.raises(ConfigError, match=msg):
        build_config("digits", overrides=bad)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'resnet51'"):
        get_preset("resnet51")
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["justakey"])
