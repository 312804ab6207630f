"""Values into a config: ``key=value`` overrides, dictionaries and YAML files, each value
coerced to its field's declared type (with the key named in every error). Keys are dotted
(``model.patch_size=128``); a bare key (``patch_size=128``) is accepted when exactly one section
has a field of that name."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .schema import Config

# ---------------------------------------------------------------------- overrides
_SECTIONS = ("model", "data", "optim", "ppo", "run")


def _field_types(obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def _coerce(value: Any, typ: Any, key: str) -> Any:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):  # e.g. int | tuple[int, int]: the first that fits
        for member in typing.get_args(typ):
            try:
                return _coerce(value, member, key)
            except ConfigError:
                continue
        raise ConfigError(f"bad value {value!r} for {key} (expected {_type_text(typ)})")
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
                return False
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError(value)
        if typ is int:
            if isinstance(value, bool):
                raise ValueError(value)
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if typ is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if typ is str:
            return "" if value is None else str(value)
        if origin is tuple:
            if isinstance(value, str):  # "0.1,0.2", "(96, 160)" or "96x160"
                text = value.replace("(", "").replace(")", "").replace("x", ",")
                value = [v for v in text.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)):
                value = [value]
            args = typing.get_args(typ) or (float, ...)
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_coerce(v, args[0], key) for v in value)
            if len(value) != len(args):  # a fixed-length tuple such as (height, width)
                raise ValueError(value)
            return tuple(_coerce(v, inner, key) for v, inner in zip(value, args))
    except (ValueError, TypeError):
        raise ConfigError(f"bad value {value!r} for {key} (expected {_type_text(typ)})") from None
    return value


def _type_text(typ: Any) -> str:
    return typ.__name__ if isinstance(typ, type) else str(typ)


# Keys that were renamed: configs and checkpoints written before still load.
RENAMED_KEYS = {"patch_backend": "kernel_backend"}  # it chooses every op's backend, not only crops'


def _resolve_key(cfg: Config, key: str) -> tuple[Any, str]:
    parts = key.split(".")
    parts[-1] = RENAMED_KEYS.get(parts[-1], parts[-1])
    key = ".".join(parts)
    if len(parts) == 1:
        if key == "preset":
            return cfg, key
        owners = [s for s in _SECTIONS if key in _field_types(getattr(cfg, s))]
        if len(owners) == 1:
            return getattr(cfg, owners[0]), key
        if not owners:
            raise ConfigError(f"unknown config key {key!r}")
        raise ConfigError(f"ambiguous config key {key!r}: use one of {[f'{o}.{key}' for o in owners]}")
    if len(parts) == 2 and parts[0] in _SECTIONS:
        section = getattr(cfg, parts[0])
        if parts[1] in _field_types(section):
            return section, parts[1]
    raise ConfigError(f"unknown config key {key!r}")


def set_value(cfg: Config, key: str, value: Any) -> None:
    owner, name = _resolve_key(cfg, key)
    typ = _field_types(owner)[name]
    setattr(owner, name, _coerce(value, typ, key))


def apply_dict(cfg: Config, d: dict[str, Any], prefix: str = "") -> Config:
    if not isinstance(d, dict):
        raise ConfigError("a config file must hold a mapping of keys to values")
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and (k in _SECTIONS) and not prefix:
            apply_dict(cfg, v, prefix=f"{k}.")
        else:
            set_value(cfg, key, v)
    return cfg


def parse_overrides(items: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v) if v.strip() else ""
        except yaml.YAMLError:
            out[k.strip()] = v
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        d = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from None
    return d or {}
