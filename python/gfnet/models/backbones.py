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
    """A feature extractor: body -> last feature map -> pool (-> neck) -> pooled features."""

    def __init__(self, body: nn.Module, feature_dim: int, fmap_channels: int, head: nn.Module,
                 neck: nn.Module | None = None, fmap_act: nn.Module | None = None, family: str = ""):
        super().__init__()
        self.body = body
        self.fmap_act = fmap_act if fmap_act is not None else nn.Identity()
        self.neck = neck if neck is not None else nn.Identity()
        self.head = head
        self.feature_dim = feature_dim
        self.fmap_channels = fmap_channels
        self.family = family

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.fmap_act(self.body(x))
        pooled = torch.flatten(F.adaptive_avg_pool2d(fmap, 1), 1)
        return self.neck(pooled), fmap

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


BackboneFn = Callable[..., Backbone]
BACKBONES: Registry[BackboneFn] = Registry("backbone", "backbone")


def register_backbone(name: str) -> Callable[[BackboneFn], BackboneFn]:
    """Decorator: ``fn(num_classes, in_channels=3, pretrained=False, **config) -> Backbone``."""
    return BACKBONES.register(name)


def list_backbones() -> list[str]:
    return BACKBONES.names()


def build_backbone(name: str, *, num_classes: int, in_channels: int = 3, pretrained: bool = False,
                   **kwargs) -> Backbone:
    return BACKBONES.lookup(name)(num_classes=num_classes, in_channels=in_channels,
                                  pretrained=pretrained, **kwargs)


# ---------------------------------------------------------------------- torchvision
def _regnet_y_600mf() -> nn.Module:
    """RegNetY-600MF (the paper's; torchvision ships 400MF and 800MF but not this one), built
    from torchvision's RegNet pieces with the pycls design parameters. No pretrained weights."""
    from functools import partial

    from torchvision.models.regnet import BlockParams, RegNet

    params = BlockParams.from_init_params(depth=15, w_0=48, w_a=32.54, w_m=2.32, group_width=16,
                                          se_ratio=0.25)
    return RegNet(params, norm_layer=partial(nn.BatchNorm2d, eps=1e-05, momentum=0.1))


_CUSTOM_TV = {"regnet_y_600mf": _regnet_y_600mf}


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
    return Backbone(body, 2048, 2048, _head(m.fc, num_classes), family="resnet")


@register_backbone("densenet121")
def densenet121(num_classes: int, in_channels: int = 3, pretrained: bool = False, **_) -> Backbone:
    m = _tv_model("densenet121", pretrained)
    m.features.conv0 = _adapt_first_conv(m.features.conv0, in_channels)
    d = m.classifier.in_features
    return Backbone(m.features, d, d, _head(m.classifier, num_classes),
                    fmap_act=nn.ReLU(inplace=False), family="densenet")


def _regnet(name: str) -> BackboneFn:
    def build(num_classes: int, in_channels: int = 3, pretrained: bool = False, **_) -> Backbone:
        m = _tv_model(name, pretrained)
        m.stem[0] = _adapt_first_conv(m.stem[0], in_channels)
        d = m.fc.in_features
        return Backbone(nn.Sequential(m.stem, m.trunk_output), d, d, _head(m.fc, num_classes),
                        family="regnet")

    return build


for _name in ("regnet_y_400mf", "regnet_y_600mf", "regnet_y_800mf", "regnet_y_1_6gf"):
    register_backbone(_name)(_regnet(_name))


def _mobilenet_v3(name: str) -> BackboneFn:
    def build(num_classes: int, in_channels: int = 3, pretrained: bool = False, **_) -> Backbone:
        m = _tv_model(name, pretrained)
        m.features[0][0] = _adapt_first_conv(m.features[0][0], in_channels)
        # classifier = Linear(960, 1280), Hardswish, Dropout, Linear(1280, K): the pooled
        # feature is the 1280-d vector before the last Linear, which is the backbone's head.
        neck = nn.Sequential(*[_no_inplace(c) for c in list(m.classifier.children())[:-1]])
        last = m.classifier[-1]
        return Backbone(m.features, last.in_features, m.classifier[0].in_features,
                        _head(last, num_classes), neck=neck, family="mobilenet")

    return build


for _name in ("mobilenet_v3_large", "mobilenet_v3_small"):
    register_backbone(_name)(_mobilenet_v3(_name))


def _efficientnet(name: str) -> BackboneFn:
    def build(num_classes: int, in_channels: int = 3, pretrained: bool = False, **_) -> Backbone:
        m = _tv_model(name, pretrained)
        m.features[0][0] = _adapt_first_conv(m.features[0][0], in_channels)
        drop, last = m.classifier[0], m.classifier[-1]
        head = nn.Sequential(_no_inplace(drop), _head(last, num_classes))
        return Backbone(m.features, last.in_features, last.in_features, head,
                        family="efficientnet")

    return build


for _name in ("efficientnet_b0", "efficientnet_b2", "efficientnet_b3"):
    register_backbone(_name)(_efficientnet(_name))


# ---------------------------------------------------------------------- small CPU backbone
class _Block(nn.Module):
    """Pre-activation-free residual block: conv-bn-relu-conv-bn + (strided 1x1) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (nn.Identity() if stride == 1 and cin == cout else
                      nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(y)) + self.short(x), inplace=True)


@register_backbone("digitnet")
def digitnet(num_classes: int, in_channels: int = 1, pretrained: bool = False, width: int = 16,
             **_) -> Backbone:
    """A small ResNet-like net for CPU training: stem + 3 strided residual blocks.

    Widths w/2 -> w -> 2w -> 4w; feature map (4w, P/8, P/8); pooled features 4w; receptive
    field ~45 px, enough for a whole 28 px digit. About 11 M MACs per 64 x 64 patch at w=16.
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
    return Backbone(body, 4 * w, 4 * w, nn.Linear(4 * w, num_classes), family="small")
