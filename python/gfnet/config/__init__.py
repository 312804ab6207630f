"""Configuration: nested dataclasses, named presets, YAML files and ``key=value`` overrides.

A config is built in three layers, later ones winning::

    preset (``get_preset("resnet50-p96")``) -> YAML file (``--config f.yaml``) -> ``--set k=v``

Keys are dotted (``model.patch_size=128``); a bare key (``patch_size=128``) is accepted when
exactly one section has a field of that name.

The package holds the schema (``schema.py``: the dataclasses, ``validate``), the way values come
in (``overrides.py``: coercion, ``--set``, YAML) and the presets (``presets.py``).
"""

from __future__ import annotations

from typing import Any

from .overrides import apply_dict, load_yaml, parse_overrides, set_value
from .presets import PRESETS, get_preset, list_presets, register_preset
from .schema import (
    AUTO_AUGMENTS,
    EVAL_INTERPOLATIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Config,
    DataConfig,
    ModelConfig,
    OptimConfig,
    PPOConfig,
    RunConfig,
    image_hw,
    size_text,
)


def build_config(preset: str | None = None, yaml_file: str | None = None,
                 overrides: list[str] | dict[str, Any] | None = None, *,
                 validate: bool = True) -> Config:
    """Preset -> YAML -> overrides, validated (``validate=False``: by the caller, once it has
    filled in the rest, e.g. what a data folder says)."""
    cfg = get_preset(preset) if preset else Config()
    if yaml_file:
        d = load_yaml(yaml_file)
        if not preset and "preset" in d:
            cfg = get_preset(d["preset"])
        apply_dict(cfg, {k: v for k, v in d.items() if k != "preset"})
    if overrides:
        if isinstance(overrides, list):
            overrides = parse_overrides(overrides)
        apply_dict(cfg, overrides)
    return cfg.validate() if validate else cfg


__all__ = ["AUTO_AUGMENTS", "EVAL_INTERPOLATIONS", "IMAGENET_MEAN", "IMAGENET_STD", "PRESETS", "Config",
           "DataConfig", "ModelConfig", "OptimConfig", "PPOConfig", "RunConfig", "apply_dict", "build_config",
           "get_preset", "image_hw", "list_presets", "load_yaml", "parse_overrides", "register_preset",
           "set_value", "size_text"]
