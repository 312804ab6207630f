"""gfnet: GFNet (Glance and Focus networks) trained and served on the gfkernels kernels.

    import gfnet
    predictor = gfnet.load("runs/demo")
    print(predictor(["cat.jpg"], budget=5)[0].class_name)

``gfnet.load`` and ``gfnet.Predictor`` are imported on first use, so ``import gfnet`` stays light.
"""

from typing import TYPE_CHECKING, Any

from .config import Config, build_config, get_preset, list_presets
from .errors import CheckpointError, ConfigError, DataError, GFNetError

if TYPE_CHECKING:
    from .predictor import Prediction, Predictions, Predictor, load

__all__ = ["CheckpointError", "Config", "ConfigError", "DataError", "GFNetError", "Prediction", "Predictions",
           "Predictor", "build_config", "get_preset", "list_presets", "load"]
__version__ = "0.1.0"

_LAZY = {"load", "Predictor", "Prediction", "Predictions"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'gfnet' has no attribute {name!r}")
