"""A user's own images: `gfnet train --data DIR` reads the classes, channels and normalisation
from the folder, the run folder keeps its config (RUN/config.yaml), and docs/TRAINING.md's
walk-through runs as written (interrupted and resumed, then the baseline, eval, report and
predict), with no --set anywhere."""

from __future__ import annotations

import functools
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from gfnet import cli
from gfnet.cli import main
from gfnet.train import TrainerCallback

from .conftest import REPO

CLASSES = ("cat", "dog", "fox")
# (height, width), PIL mode and format of the images of each class, cycled: sizes and modes mixed
IMAGES = [
    ((40, 60), "RGB", "jpg"),
    ((90, 70), "L", "png"),
    ((128, 128), "RGBA", "png"),
    ((150, 100), "P", "png"),
    ((64, 96), "RGB", "png"),
]
TINY_SCHEDULE = [
    "--epochs",
    "2",
    "--batch-size",
    "4",
    "--no-progress",
]  # the walk-through's only addition


def make_photos(
    root: Path, per_split: dict[str, int], classes=CLASSES, images=IMAGES, seed=0
) -> Path:
    """root/<split>/<class>/<i>.<ext>: noise around a colour per class, of mixed sizes and modes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in per_split.items():
        for c, name in enumerate(classes):
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True)
            for i in range(n):
                (h, w), mode, ext = images[i % len(images)]
                base = np.array([60 + 80 * c, 200 - 60 * c, 40 + 70 * (c % 2)], dtype=np.int16)
                pixels = np.clip(base + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)
                im = Image.fromarray(pixels)
                im = (
                    im.convert(mode)
                    if mode != "P"
                    else im.convert("P", palette=Image.Palette.ADAPTIVE)
                )
                im.save(folder / f"{i}.{ext}")
    return root


@pytest.fixture
def photos(tmp_path):
    return make_photos(tmp_path / "photos", {"train": 4, "val": 2})


def _printed_config(capsys, *args) -> dict:
    import yaml

    assert main(["train", *args, "--print-config"]) == 0
    out = capsys.readouterr()
    return yaml.safe_load(out.out) | {"_stderr": out.err}


# ---------------------------------------------------------------------- what --data DIR infers
def test_data_folder_sets_classes_channels_and_normalisation(capsys, photos):
    cfg = _printed_config(capsys, "--data", str(photos))
    assert cfg["preset"] == "small"  # a first run on a CPU
    assert cfg["data"]["dataset"] == "imagefolder" and cfg["data"]["root"] == str(photos.resolve())
    assert (cfg["data"]["train_dir"], cfg["data"]["val_dir"], cfg["data"]["test_dir"]) == (
        "train",
        "val",
        "",
    )
    assert (
        cfg["model"]["num_classes"] == 3 and cfg["model"]["in_channels"] == 3
    )  # some images are colour
    mean, std = cfg["model"]["mean"], cfg["model"]["std"]
    assert (
        len(mean) == len(std) == 3
        and all(0 < m < 1 for m in mean)
        and all(0 < s < 0.5 for s in std)
    )
    assert (
        "3 classes (cat, dog, fox)" in cfg["_stderr"]
        and "12 in train/, 6 in val/" in cfg["_stderr"]
    )


def test_statistics_are_those_of_the_pixels(tmp_path):
    """Flat images of two colours: the mean is their average, the std half their difference."""
    from PIL import Image

    from gfnet.data.folder_facts import inspect_image_folder

    for name, colour in (("a", (255, 0, 100)), ("b", (255, 255, 100))):
        folder = tmp_path / "flat" / name
        folder.mkdir(parents=True)
        Image.new("RGB", (30, 20), colour).save(folder / "x.png")
    facts = inspect_image_folder(tmp_path / "flat")
    assert facts.layout.train_dir == "." and facts.layout.val_fraction == pytest.approx(0.2)
    assert facts.mean == pytest.approx((1.0, 0.5, 100 / 255), abs=1e-4)
    assert facts.std == pytest.approx((1e-3, 0.5, 1e-3), abs=1e-4)  # a flat channel gets the floor


def test_grayscale_folder_trains_a_one_channel_model(capsys, tmp_path):
    from gfnet.config import Config
    from gfnet.data import build_datasets

    gray = make_photos(tmp_path / "gray", {"train": 2, "test": 2}, images=[((50, 40), "L", "png")])
    cfg = _printed_config(capsys, "--data", str(gray))
    assert cfg["model"]["in_channels"] == 1 and len(cfg["model"]["mean"]) == 1
    assert (cfg["data"]["val_dir"], cfg["data"]["test_dir"]) == (
        "test",
        "",
    )  # test/ stands in for val/
    ds = build_datasets(
        Config.from_dict({k: v for k, v in cfg.items() if k != "_stderr"}), ("train", "test")
    )
    assert ds["train"][0][0].shape == (1, 128, 128) and ds["test"][0][0].shape == (1, 128, 128)


def test_one_folder_of_classes_is_split(capsys, tmp_path):
    from gfnet.config import Config
    from gfnet.data import build_datasets
    from gfnet.data.calibration_images import val_is_test

    flat = make_photos(tmp_path / "flat", {"": 5})
    c = _printed_config(capsys, "--data", str(flat))
    assert (c["data"]["train_dir"], c["data"]["val_dir"], c["data"]["val_fraction"]) == (
        ".",
        "",
        0.2,
    )
    cfg = Config.from_dict({k: v for k, v in c.items() if k != "_stderr"})
    ds = build_datasets(cfg)
    assert (len(ds["train"]), len(ds["val"]), len(ds["test"])) == (12, 3, 3)
    assert ds["val"] is ds["test"] and val_is_test(
        cfg
    )  # exits are then calibrated on training images
    assert not set(ds["train"].indices) & set(ds["val"].indices)


def test_explicit_settings_win_and_a_wrong_class_count_is_refused(capsys, photos):
    from gfnet.config import IMAGENET_MEAN

    rc = main(["train", "--data", str(photos), "--set", "model.num_classes=10", "--print-config"])
    err = capsys.readouterr().err
    assert (
        rc == 2
        and "model.num_classes=10, but --data" in err
        and "has 3 class folders (cat, dog, fox)" in err
    )
    assert (
        _printed_config(capsys, "--data", str(photos), "--set", "num_classes=3")["model"][
            "num_classes"
        ]
        == 3
    )
    gray = _printed_config(capsys, "--data", str(photos), "--set", "model.in_channels=1")
    assert (
        gray["model"]["in_channels"] == 1 and len(gray["model"]["mean"]) == 1
    )  # statistics of the luma
    # pretrained weights keep the RGB input and ImageNet normalisation they were trained with
    r50 = _printed_config(capsys, "--preset", "resnet50-p96", "--pretrained", "--data", str(photos))
    assert r50["model"]["num_classes"] == 3 and r50["model"]["mean"] == list(IMAGENET_MEAN)
    # a --config YAML's keys count as set, as --set's do
    (photos.parent / "five.yaml").write_text("model:\n  num_classes: 5\n")
    rc = main(["train", "--data", str(photos), "--config", str(photos.parent / "five.yaml"),
               "--print-config"])
    assert rc == 2 and "model.num_classes=5, but --data" in capsys.readouterr().err
    # an explicit preset of another data set trains on the folder
    digits = _printed_config(capsys, "--preset", "digits", "--data", str(photos))
    assert digits["data"]["dataset"] == "imagefolder" and digits["model"]["num_classes"] == 3
    assert digits["model"]["backbone"] == "digitnet" and digits["model"]["in_channels"] == 3


def test_class_count_is_checked_without_data_too(capsys, photos, tmp_path):
    """A folder named by data.root rather than --data is not read for its facts, but training
    still refuses a class count that differs from the folders'."""
    rc = main(
        [
            "train",
            "--preset",
            "small",
            "--set",
            f"data.root={photos}",
            "--out",
            str(tmp_path / "run"),
            "--epochs",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert (
        rc == 2 and "the data has 3 classes (cat, dog, fox), the model model.num_classes=10" in err
    )
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda root: (root / "val" / "fox").rename(root / "val" / "wolf"),
            "missing fox; not in training: wolf",
        ),
        (lambda root: [p.unlink() for p in (root / "train" / "dog").iterdir()], "'dog' of"),
        (
            lambda root: (root / "train" / "cat" / "0.jpg").write_bytes(b"not an image"),
            "cannot read image",
        ),
    ],
    ids=["other-classes-in-val", "empty-class", "unreadable-image"],
)
def test_folder_problems_are_named(capsys, photos, damage, message):
    damage(photos)
    assert main(["train", "--data", str(photos), "--print-config"]) == 2
    assert message in capsys.readouterr().err


def test_missing_folder_says_what_was_expected(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    assert main(["train", "--data", str(tmp_path / "empty"), "--print-config"]) == 2
    assert "expected DIR/train/<class>/<image>" in capsys.readouterr().err


# ---------------------------------------------------------------------- augmentation
def test_augmentation_is_configuration():
    from PIL import Image
    from torchvision import transforms as T

    from gfnet.config import build_config
    from gfnet.data.folders import config_train_transform
    from gfnet.errors import ConfigError

    cfg = build_config(
        "small",
        overrides={
            "data.crop_scale": "0.5,0.9",
            "data.hflip": False,
            "data.color_jitter": 0.4,
            "data.auto_augment": "trivialaugment",
        },
    )
    steps = config_train_transform(cfg).transforms
    assert [type(s).__name__ for s in steps] == [
        "RandomResizedCrop",
        "ColorJitter",
        "TrivialAugmentWide",
        "PILToTensor",
    ]
    assert steps[0].scale == (0.5, 0.9) and list(steps[1].brightness) == pytest.approx([0.6, 1.4])
    plain = config_train_transform(build_config("small")).transforms
    assert [type(s) for s in plain] == [T.RandomResizedCrop, T.RandomHorizontalFlip, T.PILToTensor]
    assert plain[0].scale == (0.25, 1.0)
    rand = config_train_transform(
        build_config("small", overrides={"data.auto_augment": "randaugment"})
    )
    out = rand(Image.new("RGB", (80, 50), (10, 200, 30)))
    assert out.shape == (3, 128, 128) and out.dtype == torch.uint8
    for key, value in (
        ("data.crop_scale", "0.5,0.2"),
        ("data.auto_augment", "autoaugment"),
        ("data.color_jitter", -1),
    ):
        with pytest.raises(ConfigError, match=re.escape(key)):
            build_config("small", overrides={key: value})


# ---------------------------------------------------------------------- the run's config
def test_config_changes_name_what_the_run_was_trained_on():
    from gfnet.config import build_config
    from gfnet.run_config import config_changes

    a = build_config("small", overrides={"data.root": "/data/x"})
    b = build_config(
        "small",
        overrides={
            "data.root": "/data/y",
            "optim.epochs_stage1": 5,
            "run.threads": 3,
            "model.init_from": "base.pt",
            "data.num_workers": 4,
        },
    )
    assert config_changes(a, b) == [
        "data.root: '/data/x' -> '/data/y'",
        "optim.epochs_stage1: 10 -> 5",
    ]
    assert config_changes(a, a.copy()) == []


# ---------------------------------------------------------------------- the walk-through
def walkthrough_commands() -> list[str]:
    """The commands of docs/TRAINING.md's walk-through, as a user copies them."""
    text = (REPO / "docs" / "TRAINING.md").read_text()
    block = re.search(
        r"<!-- walkthrough:.*?-->\s*```bash\n(.*?)```\s*<!-- walkthrough end -->", text, re.S
    )
    assert block, "docs/TRAINING.md lost its walk-through"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


class InterruptAfter(TrainerCallback):
    """Ctrl-C as soon as (stage, epoch)'s checkpoint is written."""

    def __init__(self, stage: int, epoch: int):
        self.stage, self.epoch = stage, epoch

    def on_checkpoint_saved(self, trainer, stage, epoch, path):
        if (stage, epoch) == (self.stage, self.epoch):
            raise KeyboardInterrupt


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    try:
        rc = main(argv)
    except SystemExit as e:  # --version
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_walkthrough_runs_as_written(capsys, tmp_path, monkeypatch):
    """docs/TRAINING.md's commands in a folder holding photos/: train with a tiny schedule,
    interrupted in stage 2 and resumed with --resume alone, then the baseline, eval, report and
    predict, each reading the run's config."""
    import yaml

    from gfnet import __version__
    from gfnet.train.curves import run_warnings

    make_photos(tmp_path / "photos", {"train": 4, "val": 2})
    monkeypatch.chdir(tmp_path)
    commands = walkthrough_commands()
    kinds = [
        " ".join(
            w
            for w in c.split()[1:]
            if w in ("--version", "train", "--resume", "--baseline", "eval", "report", "predict")
        )
        for c in commands
    ]
    assert kinds == [
        "--version",
        "train",
        "train --resume",
        "train --baseline",
        "eval --baseline",
        "report",
        "predict",
    ]
    run = tmp_path / "runs" / "photos"
    logs = ""
    for command in commands:
        argv = shlex.split(command)[1:]
        if (
            argv[0] == "train" and "--data" in argv
        ):  # the first run: tiny, and interrupted in stage 2
            argv += TINY_SCHEDULE
            add, train, help_ = cli.COMMANDS["train"]
            interrupted = functools.partial(cli._train, callbacks=[InterruptAfter(2, 1)])
            monkeypatch.setitem(cli.COMMANDS, "train", (add, interrupted, help_))
            rc, out, err = _run(capsys, argv)
            monkeypatch.setitem(cli.COMMANDS, "train", (add, train, help_))
            assert rc == 130 and "continue with: gfnet train --out runs/photos --resume" in err, err
            logs += err
            stored = yaml.safe_load(
                (run / "config.yaml").read_text()
            )  # written as training started
            assert stored["model"]["num_classes"] == 3 and stored["optim"]["epochs_stage2"] == 2
            # resuming with other data or another schedule is refused, naming the change
            make_photos(tmp_path / "other", {"train": 2, "val": 1}, classes=("a", "b"))
            for extra, change in (
                (["--epochs", "3"], "optim.epochs_stage1: 2 -> 3"),
                (["--data", "other"], "model.num_classes: 3 -> 2"),
            ):
                rc_changed, _, err_changed = _run(
                    capsys, ["train", "--out", "runs/photos", "--resume", *extra]
                )
                assert rc_changed == 2 and change in err_changed and "--force" in err_changed, (
                    err_changed
                )
            continue
        rc, out, err = _run(capsys, argv)
        assert rc == 0, f"{command}\n{out}\n{err}"
        logs += err
        if argv[0] == "--version":
            assert out.strip() == f"gfnet {__version__}"
        elif "--resume" in argv:
            assert "stage 1: already complete" in err and "stage 2: resuming after epoch 1/2" in err
    for k in (1, 2, 3):
        ck = torch.load(run / f"stage{k}.pt", weights_only=True)
        assert (
            ck["done"]
            and ck["class_names"] == list(CLASSES)
            and ck["config"]["model"]["num_classes"] == 3
        )
    base = torch.load(run / "baseline.pt", weights_only=True)  # the run's own data and model
    assert base["done"] and base["config"]["data"] == ck["config"]["data"]
    assert base["config"]["model"]["mean"] == ck["config"]["model"]["mean"] and base["epochs"] == 4
    report = json.loads((run / "report.json").read_text())
    assert "claims" not in report and report["data"]["class_names"] == list(CLASSES)
    md = (run / "report.md").read_text()
    assert (
        md.startswith("# GFNet report: `photos`")
        and "## Summary" in md
        and "## The claims" not in md
    )
    assert "gfnet train --out runs/photos --resume" in md
    # the training warnings reach the log as each stage ends and the report
    warnings = run_warnings(run / "metrics.jsonl", 3)
    assert report["training"]["warnings"] == warnings
    for w in warnings:
        assert f"warning: {w}" in logs and f"**warning:** {w}" in md
    rows = [json.loads(x) for x in (run / "predict" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["class_name"] in CLASSES for r in rows)


# ---------------------------------------------------------------------- the command line, backbones
def test_version_and_backbone_list(capsys):
    from gfnet import __version__

    assert _run(capsys, ["--version"])[:2] == (0, f"gfnet {__version__}\n")
    rc, out, _ = _run(capsys, ["train", "--list-backbones"])
    assert rc == 0 and {"digitnet", "resnet50", "mobilenet_v3_large"} <= set(out.split())
    assert "timm/<name>" in out


def test_timm_backbone_without_timm_is_a_clear_error(monkeypatch):
    import sys

    from gfnet.config import build_config
    from gfnet.errors import ConfigError

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(
        ConfigError,
        match=r"model.backbone 'timm/resnet10t' needs timm, which is not installed: "
        r"pip install timm",
    ):
        build_config("small", overrides={"model.backbone": "timm/resnet10t"})


TIMM_MODEL = "resnet10t"  # one of timm's smallest convolutional networks


def test_timm_backbone_trains_one_step_and_its_flops_are_counted():
    timm = pytest.importorskip("timm")
    pytest.importorskip("fvcore")
    from gfnet.config import build_config
    from gfnet.errors import ConfigError
    from gfnet.flops import count_step_flops, static_macs
    from gfnet.models import build_model
    from gfnet.models.static import build_static_baseline
    from gfnet.train.stages import stage_loss

    cfg = build_config(
        "small",
        overrides={
            "model.backbone": f"timm/{TIMM_MODEL}",
            "model.image_size": 64,
            "model.patch_size": 32,
            "model.num_classes": 3,
            "model.classifier_hidden": 16,
            "model.policy_hidden": 16,
        },
    )
    model = build_model(cfg.model)
    reference = timm.create_model(TIMM_MODEL, num_classes=3)
    assert model.local_encoder.feature_dim == reference.num_features
    assert model.fmap_shape[0] == reference.num_features and model.fmap_shape[1:] == (
        1,
        1,
    )  # 32 px / 32
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    labels = torch.tensor([0, 2])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = stage_loss(model.rollout(images, policy="random"), labels, cfg.optim.head_loss_weight)
    loss.backward()
    opt.step()
    changed = [
        k
        for k, v in model.state_dict().items()
        if v.is_floating_point() and not torch.equal(v, before[k])
    ]
    assert any(k.startswith("global_encoder.model.") for k in changed)
    assert any(k.startswith("local_encoder.model.") for k in changed)
    sf = count_step_flops(model.eval())
    assert len(sf.macs) == 3 and all(m > 0 for m in sf.macs)
    assert static_macs(build_static_baseline(cfg.model).backbone, cfg.model) > sf.macs[1]
    with pytest.raises(ConfigError, match="has no model 'no_such_net'"):
        build_config("small", overrides={"model.backbone": "timm/no_such_net"})


def test_a_budget_as_accurate_as_the_rounded_baseline_reaches_it():
    """The baseline's accuracy is stored to 5 decimals (22 of 24 images: 0.91667); a budget
    scoring the same 22 of 24 (0.916666...) reaches it, one image fewer does not."""
    from gfnet.report import matching_point

    rows = [
        {"budget": 16, "accuracy": 22 / 24, "avg_macs": 48e6},
        {"budget": 1, "accuracy": 21 / 24, "avg_macs": 28e6},
    ]
    assert matching_point(rows, round(22 / 24, 5), 100e6)["budget"] == 16
    assert matching_point(rows, round(23 / 24, 5), 100e6) is None


def test_timm_weights_come_from_a_local_file(tmp_path):
    """model.backbone_weights with model.pretrained: timm loads the file (nothing is downloaded)
    into both encoders, the classifier refitted to the data's classes."""
    timm = pytest.importorskip("timm")
    from gfnet.config import build_config
    from gfnet.errors import ConfigError
    from gfnet.models import build_model

    torch.manual_seed(1)
    source = timm.create_model(TIMM_MODEL, num_classes=1000)
    weights = tmp_path / "resnet10t.pth"
    torch.save(source.state_dict(), weights)
    overrides = {
        "model.backbone": f"timm/{TIMM_MODEL}",
        "model.image_size": 64,
        "model.patch_size": 32,
        "model.num_classes": 3,
        "model.pretrained": True,
        "model.backbone_weights": str(weights),
    }
    model = build_model(build_config("small", overrides=overrides).model)
    for encoder in (model.global_encoder, model.local_encoder):
        state = encoder.model.state_dict()
        assert torch.equal(state["conv1.0.weight"], source.state_dict()["conv1.0.weight"])
        assert state["fc.weight"].shape == (3, source.num_features)
    overrides["model.backbone_weights"] = str(tmp_path / "missing.pth")
    with pytest.raises(ConfigError, match="model.backbone_weights .* does not exist"):
        build_model(build_config("small", overrides=overrides).model)


def test_force_goes_on_with_a_changed_schedule_and_records_it(capsys, tmp_path):
    """Stage 1 of 2 epochs interrupted after the first, resumed with --epochs 3: refused; with
    --force it trains epochs 2 and 3 and config.yaml records the new schedule. A finished stage
    is not reopened by more epochs: the log says so."""
    import yaml

    from .conftest import tiny_overrides

    sets = [arg for s in tiny_overrides(**{"run.max_train_batches": 1}) for arg in ("--set", s)]
    out = str(tmp_path / "run")
    first = cli.build_parser().parse_args(
        ["train", *sets, "--stage", "1", "--epochs", "2", "--out", out]
    )
    with pytest.raises(KeyboardInterrupt):
        cli._train(first, callbacks=[InterruptAfter(1, 1)])
    capsys.readouterr()
    again = ["train", "--stage", "1", "--epochs", "3", "--out", out, "--resume"]
    assert main(again) == 2
    assert "optim.epochs_stage1: 2 -> 3" in capsys.readouterr().err
    assert main([*again, "--force"]) == 0
    err = capsys.readouterr().err
    assert "resuming after epoch 1/3" in err and "stage 1 epoch 3/3" in err
    stored = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert stored["optim"]["epochs_stage1"] == 3 and stored["data"]["train_samples"] == 16
    assert (
        main(["train", "--stage", "1", "--epochs", "4", "--out", out, "--resume", "--force"]) == 0
    )
    assert (
        "stage 1 finished after 3 epochs; the config's 4 do not reopen it"
        in capsys.readouterr().err
    )
