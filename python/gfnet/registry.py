"""Registries: entries by name, filled by decorators where each entry is defined (timm style).

The backbones (``gfnet.models.backbones.BACKBONES``), the data sets (``gfnet.data.DATASETS``) and
the presets (``gfnet.config.PRESETS``) each keep one, so adding one of them is a decorated
function beside its code, never a new branch in an if-chain, and every error listing the
choices reads the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(dict[str, T], Generic[T]):
    """A dict of name -> entry (``name in R``, ``R[name]`` and ``sorted(R)`` work as for any
    dict) that refuses a name twice and names the known entries when asked for an unknown one."""

    def __init__(self, kind: str, config_key: str):
        super().__init__()
        self.kind = kind  # what an entry is, e.g. "data set"
        self.config_key = config_key  # the config field naming one, e.g. "data.dataset"

    def add(self, name: str, entry: T) -> None:
        if name in self:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self[name] = entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@R.register("name")`` on the entry itself."""

        def deco(entry: T) -> T:
            self.add(name, entry)
            return entry

        return deco

    def names(self) -> list[str]:
        return sorted(self)

    def lookup(self, name: str) -> T:
        """The entry of ``name``, or a ConfigError listing the known ones."""
        if name not in self:
            raise ConfigError(f"unknown {self.config_key} {name!r}; known: {', '.join(self.names())}")
        return self[name]
