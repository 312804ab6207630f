"""The static baseline GFNet is measured against: the same backbone, with its own head, run once
on the full-resolution image (what a user would deploy without GFNet)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..config import ModelConfig
from .backbones import build_backbone


def normalise_images(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images -> float32 (x - mean) / std per channel; uint8 is scaled to [0, 1]
    first, the convention gfkernels.crop_resize uses for GFNet's glance and patches."""
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    return (x - mean[:, None, None]) / std[:, None, None]


class StaticBaseline(nn.Module):
    """``forward(images) -> logits``: normalise, backbone, the backbone's own head."""

    def __init__(self, backbone: nn.Module, mean: Sequence[float], std: Sequence[float], image_size: int):
        super().__init__()
        self.backbone = backbone
        self.image_size = image_size
        # constants of the config, not learned state: kept out of the state dict
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feat, _ = self.backbone(normalise_images(images, self.mean, self.std))
        return self.backbone.head(feat)


def build_static_baseline(cfg: ModelConfig) -> StaticBaseline:
    backbone = build_backbone(cfg.backbone, num_classes=cfg.num_classes, in_channels=cfg.in_channels,
                              pretrained=cfg.pretrained, width=cfg.width,
                              weights=cfg.backbone_weights)
    return StaticBaseline(backbone, cfg.mean, cfg.std, cfg.image_size)
