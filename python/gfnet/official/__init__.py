"""The official GFNet release: its architectures, checkpoint format and figures.

``import_official(FILE, OUT)`` turns an official checkpoint into a gfnet checkpoint (what
``gfnet import-official`` runs); ``keys`` holds the explicit key translation, ``archs`` the
official architectures and their presets, ``figures`` the release's own figures beside ours.
docs/GFNET.md describes the format and where this project differs from the release on purpose.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .archs import OFFICIAL_ARCHS, OfficialArch, arch_of_preset, official_arch, preset_for
    from .importer import ImportResult, import_official, read_official

__all__ = ["OFFICIAL_ARCHS", "ImportResult", "OfficialArch", "arch_of_preset", "import_official",
           "official_arch", "preset_for", "read_official"]

# imported on first use, so importing gfnet.official.archs (the CLI's parser does) imports no torch
_LAZY = {"OFFICIAL_ARCHS": "archs", "OfficialArch": "archs", "arch_of_preset": "archs",
         "official_arch": "archs", "preset_for": "archs",
         "ImportResult": "importer", "import_official": "importer", "read_official": "importer"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
