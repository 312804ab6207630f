"""Backbone registry.

Every entry builds a :class:`Backbone`: ``forward(x) -> (pooled features (N, D), last feature
map (N, C, h, w))`` plus ``head``, the backbone's own classifier on the pooled features.
Entries are plain functions registered by name (timm style), so adding a backbone is one
decorated function, not a new branch somewhere else.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..registry import Registry


class Backbone(nn.Module):
    """A feature extractor: body -> last feature map -> pool (-> neck) -> pooled features.

    ``cpu_tile_bytes``: inference on CPU tensors runs a large batch in tiles of rows whose
    largest activation fits in about this many bytes (None: never tiled). For a memory-bound
    network, few channels at a large resolution, the per-row cost past the cache is twice that
    within it: the digits preset's digitnet at 48 px ran 480 us per row at a batch of 256 and
    203 in tiles of 56 rows (1 thread; 2.5x with 2). Compute-bound backbones (ResNet-50,
    MobileNetV3 at 96 px) gained 0.7-1.2x, so they are not tiled (bench/RESULTS.md, prediction
    at scale, "Third pass": batch tiling on the CPU). Training and train mode are never tiled
    (batch norm's batch statistics).

    ``cpu_prepack``: a model kept for inference packs this backbone's convolution weights for
    oneDNN once instead of on every CPU call (gfnet.models.prepack), where that was measured to
    pay: ResNet, DenseNet, RegNet and EfficientNet gained 1.04-1.36x over five steps, MobileNetV3
    and digitnet lost (0.73-0.94x in float32 or bf16; bench/RESULTS.md, "Weights packed once").
    """

    def __init__(self, body: nn.Module, feature_dim: int, fmap_channels: int, head: nn.Module,
                 neck: nn.Module | None = None, fmap_act: nn.Module | None = None, family: str = "",
                 cpu_tile_bytes: int | None = None, cpu_prepack: bool = False):
        super().__init__()
        self.body = body
        self.fmap_act = fmap_act if fmap_act is not None else nn.Identity()
        self.neck = neck if neck is not None else nn.Identity()
        self.head = head
        self.feature_dim = feature_dim
        self.fmap_channels = fmap_channels
        self.family = family
        self.cpu_tile_bytes = cpu_tile_bytes
        self.cpu_prepack = cpu_prepack
        self._peak_bytes: dict[tuple, int] = {}  # (C, H, W, dtype) -> largest activation of a row

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self._tile_rows(x)
        if rows is None:
            return self.features(x)
        if rows == 0:  # the first such batch of this shape runs whole, measuring its activations
            return self._features_measuring(x)
        parts = [self.features(tile) for tile in x.split(rows)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled features, feature map) of the whole batch at once."""
        fmap = self.fmap_act(self.body(x))
        pooled = torch.flatten(F.adaptive_avg_pool2d(fmap, 1), 1)
        return self.neck(pooled), fmap

    def _features_measuring(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features(x), recording the largest output of any leaf module per row of x."""
        peak = 0

        def record(_module, _inputs, output) -> None:
            nonlocal peak
            for t in output if isinstance(output, (tuple, list)) else (output,):
                if isinstance(t, torch.Tensor):
                    peak = max(peak, t.numel() * t.element_size())

        handles = [m.register_forward_hook(record) for m in self.modules()
                   if next(m.children(), None) is None]
        try:
            out = self.features(x)
        finally:
            for h in handles:
                h.remove()
        self._peak_bytes[(*x.shape[1:], x.dtype)] = max(1, peak // x.shape[0])
        return out

    def _tile_rows(self, x: torch.Tensor) -> int | None:
        """Rows per tile for this batch, or None to run it whole: tiles only where they pay (a
        batch of at least two tiles), of equal size; 0 where a batch of this shape that could
        be tiled comes first (its largest activation per row is not known yet; measured by
        running it whole, so that no extra forward pass ever runs, nor shows in a FLOP count)."""
        if (self.cpu_tile_bytes is None or self.training or torch.is_grad_enabled()
                or x.device.type != "cpu" or x.dim() != 4 or x.shape[0] < MIN_TILED_BATCH
                or torch.compiler.is_compiling()):
            return None
        peak = self._peak_bytes.get((*x.shape[1:], x.dtype))
        if peak is None:
            return 0
        rows = max(1, self.cpu_tile_bytes // peak)
        if x.shape[0] < 2 * rows:
            return None
        tiles = -(-x.shape[0] // rows)
        return -(-x.shape[0] // tiles)

    @torch.no_grad()
    def fmap_shape(self, in_channels: int, size: int) -> tuple[int, int, int]:
        """(C, h, w) of the feature map for a size x size input."""
        was_training = self.training
        self.eval()
        try:
            p = next(self.parameters())
            _, fmap = self(torch.zeros(1, in_channels, size, size, dtype=p.dtype, device=p.device))
        finally:
            self.train(was_training)
        return tuple(fmap.shape[1:])  # type: ignore[return-value]


MIN_TILED_BATCH = 16  # smaller batches are never tiled (nor measured)


BackboneFn = Callable[..., Backbone]
BACKBONES: Registry[BackboneFn] = Registry("backbone", "backbone")


def register_backbone(name: str) -> Callable[[BackboneFn], BackboneFn]:
    """Decorator: ``fn(num_classes, in_channels=3, pretrained=False, **config) -> Backbone``."""
    return BACKBONES.register(name)


def list_backbones() -> list[str]:
    return BACKBONES.names()


TIMM_PREFIX = "timm/"  # model.backbone = "timm/<name>": any timm model with a feature map


def check_backbone_name(name: str) -> None:
    """A ConfigError unless ``name`` is a registered backbone or ``timm/<a timm model>``."""
    if name.startswith(TIMM_PREFIX):
        timm = _import_timm(name)
        if not timm.is_model(name[len(TIMM_PREFIX):]):
            raise ConfigError(f"model.backbone {name!r}: timm {timm.__version__} has no model "
                              f"{name[len(TIMM_PREFIX):]!r} (timm.list_models() lists them)")
        return
    BACKBONES.lookup(name)


def build_backbone(name: str, *, num_classes: int, in_channels: int = 3, pretrained: bool = False,
                   **kwargs) -> Backbone:
    if name.startswith(TIMM_PREFIX):
        return timm_backbone(name[len(TIMM_PREFIX):], num_classes=num_classes,
                             in_channels=in_channels, pretrained=pretrained, **kwargs)
    return BACKBONES.lookup(name)(num_classes=num_classes, in_channels=in_channels,
                                  pretrained=pretrained, **kwargs)


def describe_backbones() -> str:
    """The registered backbones, one a line, and how to use a timm model (whether timm is here)."""
    lines = [f"{name}" for name in list_backbones()]
    try:
        import timm

        have = f"timm {timm.__version__} is installed: {len(timm.list_models())} models"
    except ImportError:
        have = "timm is not installed (pip install timm)"
    lines.append(f"{TIMM_PREFIX}<name>  any timm model with a feature map, e.g. timm/resnet18 "
                 f"({have}; pretrained weights from a local file: model.backbone_weights=FILE "
                 "with --pretrained)")
    return "\n".join(lines)


# ---------------------------------------------------------------------- timm (optional)
def _import_timm(name: str):
    try:
        import timm
    except ImportError:
        raise ConfigError(f"model.backbone {name!r} needs timm, which is not installed: "
                          "pip install timm (or choose a built-in backbone: gfnet train "
                          "--list-backbones)") from None
    return timm


class TimmBackbone(Backbone):
    """A timm model through its own feature interface: ``forward_features`` gives the last
    feature map, ``forward_head(..., pre_logits=True)`` pools it (with whatever the model puts
    before its classifier), and the model's classifier is the head."""

    def __init__(self, model: nn.Module, feature_dim: int, fmap_channels: int):
        super().__init__(nn.Identity(), feature_dim, fmap_channels, model.get_classifier(),
                         family="timm")
        self.model = model

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.model.forward_features(x)
        return self.model.forward_head(fmap, pre_logits=True), fmap


def timm_backbone(name: str, *, num_classes: int, in_channels: int = 3, pretrained: bool = False,
                  weights: str = "", **_) -> Backbone:
    """``timm/<name>`` as a Backbone. Pretrained weights come from ``weights`` (a local file of
    the model's state dict, model.backbone_weights) when given, else from timm's own source
    (which downloads); timm fits them to ``num_classes`` and ``in_channels``."""
    timm = _import_timm(TIMM_PREFIX + name)
    kw: dict = dict(num_classes=num_classes, in_chans=in_channels, pretrained=pretrained)
    if pretrained and weights:
        from pathlib import Path

        if not Path(weights).is_file():
            raise ConfigError(f"model.backbone_weights {weights!r} does not exist")
        kw["pretrained_cfg_overlay"] = dict(file=str(weights))
    try:
        model = timm.create_model(name, **kw)
    except (RuntimeError, OSError, ValueError) as e:
        raise ConfigError(f"model.backbone 'timm/{name}': timm could not build it ({e})") from None
    probe = torch.zeros(1, in_channels, 64, 64)
    was = model.training
    model.eval()
    with torch.no_grad():
        fmap = model.forward_features(probe)
        pooled = model.forward_head(fmap, pre_logits=True) if fmap.dim() == 4 else None
    model.train(was)
    if fmap.dim() != 4:
        raise ConfigError(f"model.backbone 'timm/{name}' gives no feature map (its features have "
                          f"shape {tuple(fmap.shape)}): GFNet's policy reads a (channels, height, "
                          "width) map, so choose a convolutional model")
    if num_classes <= 0 or not isinstance(model.get_classifier(), nn.Module):
        raise ConfigError(f"model.backbone 'timm/{name}' has no classifier to use as the head")
    return TimmBackbone(model, int(pooled.shape[1]), int(fmap.shape[1]))


# ---------------------------------------------------------------------- torchvision
def regnet_stage_params(depth: int, w_0: int, w_a: float, w_m: float, group_width: int,
                        quant: int = 8) -> tuple[list[int], list[int], list[int]]:
    """(stage widths, stage depths, group widths) of a RegNet design, quantised as pycls does
    (the official GFNet release builds its RegNet-Y models with pycls).

    Block j gets the width w_0 * w_m ** round(log((w_0 + w_a j) / w_0) / log(w_m)) rounded to a
    multiple of ``quant``; runs of equal widths form the stages; each stage width is then
    rounded to a multiple of its group width with Python's round (half to even). torchvision's
    builder rounds that last step up instead (its _make_divisible), which changes some widths:
    RegNetY-800MF is [64, 128, 320, 768] here and [64, 144, 320, 784] in torchvision.
    """
    import math

    widths: list[int] = []
    depths: list[int] = []
    for j in range(depth):
        k = round(math.log((w_0 + w_a * j) / w_0) / math.log(w_m))
        w = int(round(w_0 * w_m ** k / quant) * quant)
        if widths and widths[-1] == w:
            depths[-1] += 1
        else:
            widths.append(w)
            depths.append(1)
    groups = [min(group_width, w) for w in widths]
    widths = [int(round(w / g) * g) for w, g in zip(widths, groups)]
    return widths, depths, groups


def _regnet_y(depth: int, w_0: int, w_a: float, w_m: float, group_width: int) -> Callable[[], nn.Module]:
    """A RegNet-Y (SE ratio 0.25, bottleneck 1, stride 2 per stage) from torchvision's pieces
    with pycls's stage widths. No pretrained weights."""
    def make() -> nn.Module:
        from functools import partial

        from torchvision.models.regnet import BlockParams, RegNet

        widths, depths, groups = regnet_stage_params(depth, w_0, w_a, w_m, group_width)
        params = BlockParams(depths, widths, groups, [1.0] * len(widths), [2] * len(widths), se_ratio=0.25)
        return RegNet(params, norm_layer=partial(nn.BatchNorm2d, eps=1e-05, momentum=0.1))

    return make


# The paper's RegNetY-600MF (torchvision ships 400MF and 800MF but not this one) and the
# official release's RegNetY-800MF (pycls widths; torchvision's regnet_y_800mf differs).
_regnet_y_600mf = _regnet_y(15, 48, 32.54, 2.32, 16)
_regnet_y_800mf_official = _regnet_y(14, 56, 38.84, 2.4, 16)


_CUSTOM_TV = {"regnet_y_600mf": _regnet_y_600mf, "regnet_y_800mf_official": _regnet_y_800mf_official}


def _tv_model(name: str, pretrained: bool) -> nn.Module:
    """A torchvision model through its weights API; random init unless pretrained."""
    import torchvision

    if name in _CUSTOM_TV:
        if pretrained:
            raise ConfigError(f"torchvision has no pretrained weights for {name}; "
                              "train it from scratch (model.pretrained=false)")
        return _CUSTOM_TV[name]()
    weights = None
    if pretrained:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    return torchvision.models.get_model(name, weights=weights)


def _adapt_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    if conv.in_channels == in_channels:
        return conv
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None)
    with torch.no_grad():  # average the RGB filters: keeps pretrained weights meaningful
        w = conv.weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1)
        new.weight.copy_(w * 3.0 / in_channels)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def _no_inplace(mod: nn.Module) -> nn.Module:
    """In-place dropout would corrupt features that several heads read (glance + concat)."""
    if isinstance(mod, nn.Dropout) and mod.inplace:
        return nn.Dropout(mod.p)
    return mod


def _head(linear: nn.Linear, num_classes: int) -> nn.Linear:
    if linear.out_features == num_classes:
        return linear
    return nn.Linear(linear.in_features, num_classes)


@register_backbone("resnet50")
def resnet50(num_classes: int, in_channels: int = 3, pretrained: bool = False, **_) -> Backbone:
    m = _tv_model("resnet50", pretrained)
    m.conv1 = _adapt_first_conv(m.conv1, in_channels)
    body = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3, m.layer4)
    return Backbone(body, 2048, 2048, _head(m.fc, num_classes), family="resnet", cpu_prepack=True)


def _densenet(name: str) -> BackboneFn:
    def build(num_classes: int, in_channels: int = 3, pretrained: bool = False, **_) -> Backbone:
        m = _tv_model(name, pretrained)
        m.features.conv0 = _adapt_first_conv(m.features.conv0, in_channels)
        d = m.classifier.in_features
        return Backbone(m.features, d, d, _head(m.classifier, num_classes),
                        fmap_act=nn.ReLU(inplace=False), family="densenet", cpu_prepack=True)

    return build


for _name in ("densenet121", "densenet169", "densenet201"):
    register_backbone(_name)(_densenet(_name))


def _regnet(name: str) -> BackboneFn:
    def build(num_classes: int, in_channels: int = 3, pretrained: bool = False, **_) -> Backbone:
        m = _tv_model(name, pretrained)
        m.stem[0] = _adapt_first_conv(m.stem[0], in_channels)
        d = m.fc.in_features
        return Backbone(nn.Sequential(m.stem, m.trunk_output), d, d, _head(m.fc, num_classes),
                        family="regnet", cpu_prepack=True)

    return build


for _name in ("regnet_y_400mf", "regnet_y_600mf", "regnet_y_800mf", "regnet_y_800mf_official",
              "regnet_y_1_6gf"):
    register_backbone(_name)(_regnet(_name))


def _mobilenet_v3_backbone(m: nn.Module, num_classes: int, in_channels: int) -> Backbone:
    """A torchvision MobileNetV3 as a Backbone. Its classifier = Linear(960, 1280), Hardswish,
    Dropout, Linear(1280, K): the pooled feature is the 1280-d vector before the last Linear,
    which is the backbone's head."""
    m.features[0][0] = _adapt_first_conv(m.features[0][0], in_channels)
    neck = nn.Sequential(*[_no_inplace(c) for c in list(m.classifier.children())[:-1]])
    last = m.classifier[-1]
    return Backbone(m.features, last.in_features, m.classifier[0].in_features,
                    _head(last, num_classes), neck=neck, family="mobilenet")


def _mobilenet_v3(name: str) -> BackboneFn:
    def build(num_classes: int, in_channels: int = 3, pretrained: bool = False, **_) -> Backbone:
        return _mobilenet_v3_backbone(_tv_model(name, pretrained), num_classes, in_channels)

    return build


for _name in ("mobilenet_v3_large", "mobilenet_v3_small"):
    register_backbone(_name)(_mobilenet_v3(_name))


# MobileNet-V3-Large as the official GFNet release builds it (gen-efficientnet): per stage
# (kernel, expansion ratio, output channels, squeeze-excite, hard-swish, stride) of each block.
_MBV3_LARGE = [
    (3, 1.0, 16, False, False, 1),
    (3, 4.0, 24, False, False, 2), (3, 3.0, 24, False, False, 1),
    (5, 3.0, 40, True, False, 2), (5, 3.0, 40, True, False, 1), (5, 3.0, 40, True, False, 1),
    (3, 6.0, 80, False, True, 2), (3, 2.5, 80, False, True, 1), (3, 2.3, 80, False, True, 1),
    (3, 2.3, 80, False, True, 1),
    (3, 6.0, 112, True, True, 1), (3, 6.0, 112, True, True, 1),
    (5, 6.0, 160, True, True, 2), (5, 6.0, 160, True, True, 1), (5, 6.0, 160, True, True, 1),
]


def _mobilenet_v3_large_official(width: float) -> Callable[[bool], nn.Module]:
    """The release's MobileNet-V3-Large at ``width``: batch norm eps 1e-5 and momentum 0.1
    (torchvision: 1e-3, 0.01); every channel count scaled and rounded from the base network
    block by block, an expansion as make_divisible(block input x ratio) (torchvision scales
    the base expansion instead: 248 vs the release's 264 channels in a 1.25 block); a 1280-wide
    head at every width (torchvision scales it). The head is a 1x1 conv on the pooled features
    in the release and a Linear here: the same map, its weight reshaped on import."""
    def make(pretrained: bool) -> nn.Module:
        from functools import partial

        from torchvision.models.mobilenetv3 import InvertedResidualConfig, MobileNetV3

        if pretrained and width != 1.0:
            raise ConfigError(f"no pretrained weights for MobileNet-V3-Large at width {width}")
        adjust = InvertedResidualConfig.adjust_channels  # make_divisible(channels x factor, 8)
        cin = adjust(16, width)
        setting = []
        for k, ratio, cout, se, hs, stride in _MBV3_LARGE:
            out = adjust(cout, width)
            mid = cin if ratio == 1.0 else adjust(cin, ratio)
            setting.append(InvertedResidualConfig(cin, k, mid, out, se, "HS" if hs else "RE", stride, 1, 1.0))
            cin = out
        m = MobileNetV3(setting, last_channel=1280,
                        norm_layer=partial(nn.BatchNorm2d, eps=1e-5, momentum=0.1))
        if pretrained:
            import torchvision

            weights = torchvision.models.get_model_weights("mobilenet_v3_large").DEFAULT
            m.load_state_dict(weights.get_state_dict(progress=True))
        return m

    return make


def _mobilenet_v3_official(width: float) -> BackboneFn:
    def build(num_classes: int, in_channels: int = 3, pretrained: bool = False, **_) -> Backbone:
        return _mobilenet_v3_backbone(_mobilenet_v3_large_official(width)(pretrained), num_classes, in_channels)

    return build


register_backbone("mobilenet_v3_large_official")(_mobilenet_v3_official(1.0))
register_backbone("mobilenet_v3_large_125_official")(_mobilenet_v3_official(1.25))


def _efficientnet(name: str) -> BackboneFn:
    def build(num_classes: int, in_channels: int = 3, pretrained: bool = False, **_) -> Backbone:
        m = _tv_model(name, pretrained)
        m.features[0][0] = _adapt_first_conv(m.features[0][0], in_channels)
        drop, last = m.classifier[0], m.classifier[-1]
        head = nn.Sequential(_no_inplace(drop), _head(last, num_classes))
        return Backbone(m.features, last.in_features, last.in_features, head,
                        family="efficientnet", cpu_prepack=True)

    return build


for _name in ("efficientnet_b0", "efficientnet_b2", "efficientnet_b3"):
    register_backbone(_name)(_efficientnet(_name))


# ---------------------------------------------------------------------- small CPU backbone
class _PointwiseConv(nn.Conv2d):
    """A strided 1x1 convolution (a residual shortcut). On channels_last inputs it reads every
    stride-th pixel first and convolves those at stride 1: the same sums, but not through
    oneDNN's strided 1x1 channels_last kernel, whose weight gradient crashes the process (a
    segmentation fault) for fewer than 16 input channels at 48 px and more (torch 2.14.1 on
    AVX-512 CPUs; digitnet's first shortcut has 8). Contiguous inputs take the plain convolution,
    so contiguous training is unchanged to the bit."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        if s == (1, 1) or x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x)
        return F.conv2d(x[:, :, ::s[0], ::s[1]], self.weight, self.bias)


class _Block(nn.Module):
    """Pre-activation-free residual block: conv-bn-relu-conv-bn + (strided 1x1) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (nn.Identity() if stride == 1 and cin == cout else
                      nn.Sequential(_PointwiseConv(cin, cout, stride), nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(y)) + self.short(x), inplace=True)


# digitnet's CPU inference tiles (Backbone.cpu_tile_bytes): 4 MiB of its largest activation (56
# rows at 48 px), measured best among 4 and 8 MiB on a 2-core EPYC with a 32 MiB L3
DIGITNET_CPU_TILE_BYTES = 4 * 2**20


@register_backbone("digitnet")
def digitnet(num_classes: int, in_channels: int = 1, pretrained: bool = False, width: int = 16,
             **_) -> Backbone:
    """A small ResNet-like net for CPU training: stem + 3 strided residual blocks.

    Widths w/2 -> w -> 2w -> 4w; feature map (4w, P/8, P/8); pooled features 4w; receptive
    field ~45 px, enough for a whole digit of the ``digits`` preset (13-17 px). About 6.6 M MACs
    per 48 x 48 patch at w=16 (11 M per 64 x 64).
    """
    if pretrained:
        raise ConfigError("backbone 'digitnet' has no pretrained weights")
    w = width
    body = nn.Sequential(
        nn.Conv2d(in_channels, w // 2, 3, 1, 1, bias=False), nn.BatchNorm2d(w // 2), nn.ReLU(inplace=True),
        _Block(w // 2, w, 2),
        _Block(w, 2 * w, 2),
        _Block(2 * w, 4 * w, 2),
    )
    return Backbone(body, 4 * w, 4 * w, nn.Linear(4 * w, num_classes), family="small",
                    cpu_tile_bytes=DIGITNET_CPU_TILE_BYTES)
