"""The config's schema: five nested dataclasses (model, data, optim, ppo, run), their defaults
and ``Config.validate``. Values come in through gfnet.config.overrides; named presets live in
gfnet.config.presets."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

# the inference formats (gfnet.precision: what each means and does)
PRECISIONS = ("fp32", "bf16", "fp16")
MIXTURE_PRECISIONS = ("auto", "fp32", "bf16")  # optim.mixture_precision
LAYOUTS = ("auto", "channels_last", "contiguous")
TRAIN_LAYOUTS = LAYOUTS[1:]  # training takes a layout as given: no "auto"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_INTERPOLATIONS = ("bilinear", "bicubic")
# data.auto_augment: torchvision's RandAugment or TrivialAugmentWide, or none
AUTO_AUGMENTS = ("none", "randaugment", "trivialaugment")
POLICY_TRAININGS = ("ppo", "differentiable", "mixture")  # optim.policy_training: how the policy learns


def image_hw(size: int | Sequence[int], name: str = "image size") -> tuple[int, int]:
    """(H, W) of an image size given as S (a square S x S) or (H, W)."""
    if isinstance(size, bool):
        raise ConfigError(f"{name} must be an integer or (height, width), not {size!r}")
    if isinstance(size, int):
        return size, size
    if isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 2 \
            and all(isinstance(v, int) and not isinstance(v, bool) for v in size):
        return int(size[0]), int(size[1])
    raise ConfigError(f"{name} must be an integer or (height, width), not {size!r}")


def size_text(size: int | Sequence[int]) -> str:
    """"224" for a square size, "96 x 160" (height x width) otherwise."""
    H, W = image_hw(size)
    return str(H) if H == W else f"{H} x {W}"


@dataclass
class ModelConfig:
    backbone: str = "resnet50"
    num_classes: int = 1000
    in_channels: int = 3
    image_size: int | tuple[int, int] = 224  # full-resolution input: S (S x S) or (H, W); the digits canvas
    patch_size: int = 96  # P: glance size and focus patch size
    max_steps: int = 5  # T: one glance + (T - 1) focus steps
    glance_mode: str = "bicubic"  # interpolation of the whole image down to P
    glance_align_corners: bool = True
    classifier: str = "gru"  # "gru" (GRU + per-step heads) or "concat" (concat features)
    classifier_hidden: int = 1024  # GRU hidden size
    # "gru": one linear head shared by every step (the official code) instead of one per step
    classifier_shared_head: bool = False
    # "gru": the glance's prediction is the global encoder's own head (official RegNet); the GRU
    # still reads the glance features. ("concat" always predicts the glance this way.)
    glance_from_head: bool = False
    policy_state: str = "mlp"  # "mlp" (flatten -> MLP) or "conv" (1x1 conv -> MLP)
    policy_mlp_width: int = 1024  # first layer width of the "mlp" state encoder (official: 2048)
    policy_conv_channels: int = 32  # channels of the "conv" state encoder's 1x1 conv
    policy_conv_bias: bool = True  # a bias on that 1x1 conv (the official one has none)
    policy_hidden: int = 1024  # state embedding and policy GRU cell size
    action_std: float = 0.1  # fixed std of the Gaussian policy
    mean: tuple[float, ...] = IMAGENET_MEAN  # normalisation fused into crop_resize
    std: tuple[float, ...] = IMAGENET_STD
    pretrained: bool = False  # torchvision weights for both encoders (downloads if needed)
    # where a fresh first stage's weights start: a static baseline's backbone for both encoders
    # (stage 1), or any gfnet checkpoint, e.g. an imported official one (train/warm_start.py)
    init_from: str = ""
    # model.pretrained with a timm backbone (backbone "timm/<name>"): a local file of its
    # weights ("" = timm's own source, which downloads)
    backbone_weights: str = ""
    width: int = 16  # base width of the small "digitnet" backbone (ignored by others)
    # evaluation preprocessing (data loaders, read_image, gfnet predict, gfnet.load): scale the
    # image to cover image_size / eval_crop_fraction with eval_interpolation, then centre-crop
    # image_size (the paper presets: the official per-model settings, timm's crop_pct); a data
    # set may fix its own (data/datasets.py: CIFAR takes whole images)
    eval_crop_fraction: float = 0.875
    eval_interpolation: str = "bilinear"  # "bilinear" | "bicubic"


@dataclass
class DataConfig:
    dataset: str = "imagefolder"  # a registered data set: digits, imagefolder, cifar10, cifar100, ...
    root: str = ""  # data folder (imagefolder: holds train/ and val/ class folders)
    train_dir: str = "train"
    val_dir: str = "val"
    test_dir: str = ""  # imagefolder: optional separate test split ("" = use val)
    download: bool = False  # CIFAR: download only when asked
    num_workers: int = 0
    val_fraction: float = 0.0  # imagefolder/cifar: held-out part of train used as val
    # training augmentation of image folders (CIFAR keeps its pad-and-crop; the digits draw
    # fresh canvases): a random crop of crop_scale (fractions of the image's area, low and high)
    # resized to the model's size, a horizontal flip half the time (off for digits and text,
    # which a flip turns into other symbols), a colour jitter of brightness, contrast and
    # saturation by up to this fraction (hue by a quarter of it; 0 = off), and torchvision's
    # RandAugment or TrivialAugment on top
    crop_scale: tuple[float, float] = (0.08, 1.0)
    hflip: bool = True
    color_jitter: float = 0.0
    auto_augment: str = "none"  # none | randaugment | trivialaugment
    keep_aspect: bool = True  # resize images keeping their aspect ratio (cover, then centre-crop)
    # to a non-square model.image_size; false stretches them to it
    # images the exit thresholds are calibrated on (gfnet eval), never the test images:
    # "auto" = the val split when it is not the test split, else a random subset of the
    # training images (the official way); "val" (refused when val is the test split); "train"
    calibration: str = "auto"
    calibration_samples: int = 200000  # at most this many training images ("train")
    calibration_augment: bool = True  # "train": training augmentation on them (as the official)
    # cluttered digits
    digit_size: int = 16
    digit_size_jitter: int = 2  # digit side drawn uniformly in [size - j, size + j]
    num_clutter: int = 12  # fragments of other digits per canvas
    fragment_size: int = 8  # side of a fragment cut out of another (scaled) digit
    near_clutter: int = 6  # how many of the fragments sit right beside the digit
    train_samples: int = 6000  # canvases per training epoch (freshly sampled per epoch)
    val_samples: int = 1000
    test_samples: int = 2000
    split_seed: int = 0  # fixes the split by digit instance and the val/test canvases


@dataclass
class OptimConfig:
    batch_size: int = 256  # global batch (divided over ranks under torchrun)
    epochs_stage1: int = 60
    epochs_stage2: int = 15  # the official train.py runs PPO for 15 epochs
    epochs_stage3: int = 60
    # the static baseline's epochs; 0: as many as GFNet's encoders train (stage 1 + stage 3)
    epochs_baseline: int = 0
    lr_backbone: float = 0.01
    lr_classifier_stage1: float = 0.1
    lr_classifier_stage3: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    head_loss_weight: float = 1.0  # r: weight of the backbones' own heads in the loss
    freeze_global_stage1: bool = False  # keep the global encoder frozen in stage 1
    freeze_global_stage3: bool = False  # ... and in stage 3 (official MobileNet/EfficientNet)
    # stage-3 focus locations: "sample" from the frozen policy (official) or its "mean"
    stage3_actions: str = "sample"
    schedule_unit: str = "epoch"  # cosine schedule stepped per "epoch" or per "step"
    grad_clip: float = 0.0  # 0 = off
    # How the policy learns where to look. "ppo": the paper's recipe, stage 2 by reinforcement
    # learning, then the fine-tune (stage 3). "differentiable": no stage 2; stage 3 trains the
    # policy with the encoders and classifier by backpropagating the classification losses
    # through the bilinear focus crop into the patch locations (docs/TRAINING.md). "mixture":
    # stage 2 trains the policy by gradient through a soft choice among candidate glimpses (the
    # features of a grid of patches, mixed by learned weights), then the fine-tune.
    policy_training: str = "ppo"
    # "differentiable": the policy's learning rate in stage 3 (Adam; "mixture": mixture_lr)
    lr_policy: float = 1e-3
    mixture_grid: int = 3  # "mixture": the candidate locations, a G x G grid over [0, 1]^2
    mixture_epochs: int = 1  # "mixture": stage 2's epochs (optim.epochs_stage2 is PPO's)
    # "mixture": stage 2's batch (0: optim.batch_size). The stage's cost is per image (the
    # candidates), what the policy learns is per update: a smaller batch learns as much from
    # fewer images
    mixture_batch_size: int = 0
    mixture_lr: float = 2e-3  # "mixture": stage 2's learning rate (Adam: policy and scorers)
    # "mixture": weight of the actor's regression onto the candidates' expected location
    mixture_action_weight: float = 10.0
    # "mixture": from the second focus step on, also the previous step's location and the
    # candidates this far up, down, left and right of it, in action units (0: the grid only)
    mixture_refine: float = 0.125
    # "mixture": the arithmetic of the candidates' encoding (the frozen local encoder's copy):
    # "auto" is bf16 where the device multiplies bf16 in hardware (a CPU with AVX-512 BF16 or
    # AMX, a GPU with bf16), else fp32; "fp32" or "bf16" force one
    mixture_precision: str = "auto"
    # "mixture": weight of the look-ahead, each focus step's candidates also valued by the loss
    # the next step expects after them (its scorer's choice among the grid and a second look),
    # as PPO's return credits an action with the next step's reward (0: off)
    mixture_lookahead: float = 3.0
    # "differentiable": stage 3's loss also averages in a rollout at uniformly random locations,
    # so the local encoder and classifier keep learning from everywhere, not only from where
    # the young policy looks
    random_focus_loss: bool = True


@dataclass
class PPOConfig:
    lr: float = 3e-4
    gamma: float = 0.7
    clip: float = 0.2
    ppo_epochs: int = 1  # PPO epochs per mini-batch
    value_coef: float = 0.5
    entropy_coef: float = 0.01
    normalize_returns: bool = True
    # clamp sampled actions to [0, 1] before taking their log-probability (official); off:
    # the log-probability of the raw Gaussian sample (patch extraction clamps either way)
    clamp_actions: bool = True


@dataclass
class RunConfig:
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    amp: str = "auto"  # training: "auto" (bf16 on GPU, off on CPU) | "bf16" | "fp16" | "off"
    # inference (gfnet eval / predict / the report's engines; gfnet.precision): the networks'
    # precision, "fp32" | "bf16" (a CPU with native bf16, or a GPU) | "fp16" (a GPU), and their
    # memory layout, "auto" | "channels_last" | "contiguous"
    precision: str = "fp32"
    layout: str = "auto"
    # training's memory layout, "contiguous" | "channels_last" (its precision is run.amp)
    train_layout: str = "contiguous"
    deterministic: bool = False
    progress: bool = True  # tqdm bars (rank 0 only)
    threads: int = 0  # torch.set_num_threads (0 = leave as is)
    max_train_batches: int = 0  # cap batches per epoch (0 = all): smoke runs and tests
    max_eval_batches: int = 0
    eval_batch_size: int = 0  # 0 = optim.batch_size
    # gfkernels backend of every op the model and its engines run (crop_resize, early_exit,
    # gather_rows); "" = the device's default, falling back to the reference where not built
    kernel_backend: str = ""


@dataclass
class Config:
    preset: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    run: RunConfig = field(default_factory=RunConfig)

    # ------------------------------------------------------------------ conversion
    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        from .overrides import apply_dict  # overrides builds on the schema

        cfg = cls()
        apply_dict(cfg, d)
        return cfg

    def copy(self) -> "Config":
        return copy.deepcopy(self)

    def validate(self) -> "Config":
        m, d, o = self.model, self.data, self.optim
        from ..data import DATASETS  # late imports: the registries fill as their modules load
        from ..models.backbones import check_backbone_name

        check_backbone_name(m.backbone)  # ConfigError naming the registered backbones
        H, W = image_hw(m.image_size, "model.image_size")
        if m.patch_size <= 0 or H <= 0 or W <= 0:
            raise ConfigError("model.image_size and model.patch_size must be positive")
        if min(H, W) < m.patch_size:
            raise ConfigError(
                f"image size {size_text(m.image_size)} is smaller than the patch size {m.patch_size}; "
                "a focus patch must fit inside the image"
            )
        if not 0 < m.eval_crop_fraction <= 1:
            raise ConfigError(f"model.eval_crop_fraction must be in (0, 1], not {m.eval_crop_fraction!r}")
        if m.eval_interpolation not in EVAL_INTERPOLATIONS:
            raise ConfigError(f"model.eval_interpolation must be one of {', '.join(EVAL_INTERPOLATIONS)}, "
                              f"not {m.eval_interpolation!r}")
        if m.max_steps < 1:
            raise ConfigError("model.max_steps must be >= 1")
        if m.classifier not in ("gru", "concat"):
            raise ConfigError(f"model.classifier must be 'gru' or 'concat', not {m.classifier!r}")
        if m.policy_state not in ("mlp", "conv"):
            raise ConfigError(f"model.policy_state must be 'mlp' or 'conv', not {m.policy_state!r}")
        if m.glance_mode not in ("bilinear", "bicubic", "nearest"):
            raise ConfigError(f"model.glance_mode {m.glance_mode!r} is not bilinear|bicubic|nearest")
        if len(m.mean) != m.in_channels or len(m.std) != m.in_channels:
            raise ConfigError(
                f"model.mean/std need {m.in_channels} values (model.in_channels), "
                f"got {len(m.mean)} and {len(m.std)}"
            )
        if any(s <= 0 for s in m.std):
            raise ConfigError("model.std values must be positive")
        if m.num_classes < 2:
            raise ConfigError("model.num_classes must be >= 2")
        DATASETS.lookup(d.dataset)  # ... and data sets
        if o.batch_size < 1:
            raise ConfigError("optim.batch_size must be >= 1")
        if o.schedule_unit not in ("epoch", "step"):
            raise ConfigError("optim.schedule_unit must be 'epoch' or 'step'")
        if o.stage3_actions not in ("sample", "mean"):
            raise ConfigError(f"optim.stage3_actions must be 'sample' or 'mean', not {o.stage3_actions!r}")
        if d.calibration not in ("auto", "val", "train"):
            raise ConfigError(f"data.calibration must be auto|val|train, not {d.calibration!r}")
        lo, hi = d.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"data.crop_scale must be two fractions of the image's area, "
                              f"0 < low <= high <= 1, not {d.crop_scale!r}")
        if d.color_jitter < 0:
            raise ConfigError(f"data.color_jitter must be >= 0 (0 = off), not {d.color_jitter!r}")
        if d.auto_augment not in AUTO_AUGMENTS:
            raise ConfigError(f"data.auto_augment must be one of {', '.join(AUTO_AUGMENTS)}, "
                              f"not {d.auto_augment!r}")
        if d.calibration_samples < 1:
            raise ConfigError("data.calibration_samples must be >= 1")
        if self.run.amp not in ("auto", "bf16", "fp16", "off"):
            raise ConfigError("run.amp must be auto|bf16|fp16|off")
        if self.run.precision not in PRECISIONS:
            raise ConfigError(f"run.precision must be {'|'.join(PRECISIONS)}, not {self.run.precision!r}")
        if self.run.layout not in LAYOUTS:
            raise ConfigError(f"run.layout must be {'|'.join(LAYOUTS)}, not {self.run.layout!r}")
        if self.run.train_layout not in TRAIN_LAYOUTS:
            raise ConfigError(f"run.train_layout must be {'|'.join(TRAIN_LAYOUTS)}, not {self.run.train_layout!r}")
        for k in (1, 2, 3):
            if getattr(o, f"epochs_stage{k}") < 0:
                raise ConfigError(f"optim.epochs_stage{k} must be >= 0")
        if o.epochs_baseline < 0:
            raise ConfigError("optim.epochs_baseline must be >= 0 (0: stage-1 + stage-3 epochs)")
        if o.policy_training not in POLICY_TRAININGS:
            raise ConfigError(f"optim.policy_training must be one of {', '.join(POLICY_TRAININGS)}, "
                              f"not {o.policy_training!r}")
        if not o.lr_policy > 0:
            raise ConfigError(f"optim.lr_policy must be > 0, not {o.lr_policy!r}")
        if o.mixture_grid < 2:
            raise ConfigError(f"optim.mixture_grid must be >= 2 (a G x G grid of candidates), "
                              f"not {o.mixture_grid!r}")
        if o.mixture_epochs < 0:
            raise ConfigError("optim.mixture_epochs must be >= 0")
        if not o.mixture_lr > 0:
            raise ConfigError(f"optim.mixture_lr must be > 0, not {o.mixture_lr!r}")
        if o.mixture_batch_size < 0:
            raise ConfigError(f"optim.mixture_batch_size must be >= 0 (0: optim.batch_size), "
                              f"not {o.mixture_batch_size!r}")
        if o.policy_training == "mixture" and self.model.max_steps < 2:
            raise ConfigError("optim.policy_training=mixture learns where the focus steps look: "
                              f"model.max_steps must be >= 2, not {self.model.max_steps}")
        if not 0.0 <= o.mixture_refine <= 0.5:
            raise ConfigError(f"optim.mixture_refine must be in [0, 0.5] (action units), not {o.mixture_refine!r}")
        if o.mixture_precision not in MIXTURE_PRECISIONS:
            raise ConfigError(f"optim.mixture_precision must be one of {', '.join(MIXTURE_PRECISIONS)}, "
                              f"not {o.mixture_precision!r}")
        if not o.mixture_lookahead >= 0:
            raise ConfigError(f"optim.mixture_lookahead must be >= 0 (0: off), not {o.mixture_lookahead!r}")
        if not o.mixture_action_weight > 0:
            raise ConfigError(f"optim.mixture_action_weight must be > 0, not {o.mixture_action_weight!r}")
        return self


def _to_plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_plain(v) for v in x]
    return x
