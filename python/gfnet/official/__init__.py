"""The official GFNet release: its architectures, checkpoint format and figures.

``import_official(FILE, OUT)`` turns an official checkpoint into a gfnet checkpoint (what
``gfnet import-official`` runs); ``keys`` holds the explicit key translation, ``archs`` the
official architectures and their presets, ``figures`` the release's own figures beside ours.
docs/GFNET.md describes the format and where this project differs from the release on purpose.
"""

from .archs import OFFICIAL_ARCHS, OfficialArch, arch_of_preset, official_arch, preset_for
from .importer import ImportResult, import_official, read_official

__all__ = ["OFFICIAL_ARCHS", "ImportResult", "OfficialArch", "arch_of_preset", "import_official",
           "official_arch", "preset_for", "read_official"]
