"""The architectures of the official GFNet release and the presets they import into.

One row per ``model_name`` an official checkpoint can carry. ``layout`` names the state-dict
layout of its encoders (keys.py translates each into ours); ``preset`` is the preset family
(``{preset}-p{P}``) whose model computes what the official one does.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import CheckpointError


@dataclass(frozen=True)
class OfficialArch:
    model_name: str  # as the official checkpoints and train.py's --model_arch spell it
    preset: str  # our preset family: "{preset}-p{P}"
    layout: str  # encoder state-dict layout: resnet | densenet | regnet | mobilenetv3 | efficientnet
    released: tuple[tuple[int, int], ...]  # (patch size, T) of the released checkpoints
    paper_name: str


OFFICIAL_ARCHS: dict[str, OfficialArch] = {a.model_name: a for a in [
    OfficialArch("resnet50", "resnet50", "resnet", ((96, 5), (128, 5)), "ResNet-50"),
    OfficialArch("densenet121", "densenet121", "densenet", ((96, 5),), "DenseNet-121"),
    OfficialArch("densenet169", "densenet169", "densenet", ((96, 5),), "DenseNet-169"),
    OfficialArch("densenet201", "densenet201", "densenet", ((96, 5),), "DenseNet-201"),
    OfficialArch("regnety_600m", "regnet_y_600mf", "regnet", ((96, 5),), "RegNet-Y-600MF"),
    OfficialArch("regnety_800m", "regnet_y_800mf", "regnet", ((96, 5),), "RegNet-Y-800MF"),
    OfficialArch("regnety_1.6g", "regnet_y_1_6gf", "regnet", ((96, 5),), "RegNet-Y-1.6GF"),
    OfficialArch("mobilenetv3_large_100", "mobilenet_v3_large", "mobilenetv3", ((96, 3), (128, 3)),
                 "MobileNet-V3-Large (1.00)"),
    OfficialArch("mobilenetv3_large_125", "mobilenet_v3_large_125", "mobilenetv3", ((128, 3),),
                 "MobileNet-V3-Large (1.25)"),
    OfficialArch("efficientnet_b2", "efficientnet_b2", "efficientnet", ((128, 4),), "EfficientNet-B2"),
    OfficialArch("efficientnet_b3", "efficientnet_b3", "efficientnet", ((128, 4), (144, 4)), "EfficientNet-B3"),
]}


def official_arch(model_name: str) -> OfficialArch:
    if model_name not in OFFICIAL_ARCHS:
        raise CheckpointError(f"unknown official model_name {model_name!r}; known: {', '.join(OFFICIAL_ARCHS)}")
    return OFFICIAL_ARCHS[model_name]


def preset_for(model_name: str, patch_size: int) -> tuple[str, dict[str, int]]:
    """(preset name, overrides) for an official model at ``patch_size``: the preset of that
    patch size when there is one, else the family's first preset with the patch size set."""
    from ..config import PRESETS

    arch = official_arch(model_name)
    name = f"{arch.preset}-p{patch_size}"
    if name in PRESETS:
        return name, {}
    first = f"{arch.preset}-p{arch.released[0][0]}"
    return first, {"model.patch_size": patch_size}


def arch_of_preset(preset: str) -> OfficialArch | None:
    """The official architecture a preset reproduces (None for our own presets)."""
    base = preset.rsplit("-p", 1)[0]
    for arch in OFFICIAL_ARCHS.values():
        if arch.preset == base:
            return arch
    return None


__all__ = ["OFFICIAL_ARCHS", "OfficialArch", "arch_of_preset", "official_arch", "preset_for"]
