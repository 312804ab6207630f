"""Makes `import fvcore` fail in this process, as on a machine where it is not installed.

Put this folder first on PYTHONPATH (`PYTHONPATH=bench/without_fvcore`): Python imports
sitecustomize at start-up, and this one puts a finder at the front of sys.meta_path that
refuses fvcore and its submodules. The GPU image has no fvcore, so `gpu_check.sh --dry-run` and
tests/test_without_fvcore.py run with it hidden to catch what would break there.
"""

import sys


class _RefuseFvcore:
    """A meta path finder that answers every fvcore import with ModuleNotFoundError."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "fvcore" or name.startswith("fvcore."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by bench/without_fvcore)",
                                      name=name)
        return None


sys.meta_path.insert(0, _RefuseFvcore())
