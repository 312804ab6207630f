"""GPU tests: every test under tests/cuda/ is marked `cuda` and skipped where no CUDA GPU is
visible."""

from __future__ import annotations

import os

import pytest
import torch

_HERE = os.path.dirname(os.path.abspath(__file__))

NO_GPU_REASON = "needs a CUDA GPU (none visible)"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if str(item.path).startswith(_HERE + os.sep):
            item.add_marker(pytest.mark.cuda)
            if not torch.cuda.is_available():
                item.add_marker(pytest.mark.skip(reason=NO_GPU_REASON))
