"""GPU tests: every test under tests/cuda/ is marked `cuda` and skipped where no CUDA GPU is
visible.

pytest imports every conftest.py as the module "conftest", and the last one loaded wins in
sys.modules. So that `from conftest import random_images, ...` keeps working in test modules
anywhere (tests/ or tests/cuda/), this file re-exports the helpers of tests/conftest.py."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("gfk_tests_conftest",
                                               os.path.join(os.path.dirname(_HERE), "conftest.py"))
_parent = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_parent)


def _is_fixture(obj) -> bool:
    return (hasattr(obj, "_pytestfixturefunction") or hasattr(obj, "_fixture_function_marker")
            or type(obj).__name__ == "FixtureFunctionDefinition")


for _name in dir(_parent):
    _obj = getattr(_parent, _name)
    if not _name.startswith("_") and _name not in globals() and not _is_fixture(_obj):
        globals()[_name] = _obj

NO_GPU_REASON = "needs a CUDA GPU (none visible)"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if str(item.path).startswith(_HERE + os.sep):
            item.add_marker(pytest.mark.cuda)
            if not torch.cuda.is_available():
                item.add_marker(pytest.mark.skip(reason=NO_GPU_REASON))
