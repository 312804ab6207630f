"""gfnet: GFNet (Glance and Focus networks) trained and served on the gfkernels kernels."""

from .config import Config, build_config, get_preset, list_presets
from .errors import CheckpointError, ConfigError, DataError, GFNetError

__all__ = ["CheckpointError", "Config", "ConfigError", "DataError", "GFNetError", "build_config",
           "get_preset", "list_presets"]
__version__ = "0.1.0"
