"""Run by tests/test_without_fvcore.py with fvcore hidden (PYTHONPATH=bench/without_fvcore):
the predictor and `gfnet predict` work and say their MACs are not counted; `gfnet flops` and
`gfnet eval` refuse with the reason. Prints one line per check; any failure raises."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def main(folder: Path) -> None:
    import gfnet
    from gfnet import cli
    from gfnet.config import build_config
    from gfnet.flops import FVCORE_MISSING, fvcore_available
    from gfnet.models import build_model

    from tests.gfnet.conftest import save_gfnet_checkpoint, tiny_overrides

    assert not fvcore_available(), "fvcore is importable: the blocker did not load"
    cfg = build_config("digits", overrides=tiny_overrides())
    torch.manual_seed(0)
    ckpt = save_gfnet_checkpoint(folder / "c.pt", cfg, build_model(cfg.model))
    predictor = gfnet.load(ckpt, "cpu")
    images = [torch.randint(0, 256, (1, 128, 128), dtype=torch.uint8) for _ in range(3)]
    result = predictor(images, threshold=2.0)  # nobody exits early: every step runs
    assert result.exit_steps == [predictor.steps] * 3, result.exit_steps
    assert result.step_macs is None and result.avg_macs is None and predictor.step_macs is None
    assert all(p.macs is None for p in result), [p.macs for p in result]
    print("predictor: ok, macs None")

    png = folder / "digit.png"
    Image.fromarray(images[0][0].numpy().astype(np.uint8)).save(png)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["predict", str(ckpt), str(png), "--out", str(folder / "pred"), "--device", "cpu"])
    assert code == 0 and f"MACs: {FVCORE_MISSING}" in out.getvalue(), out.getvalue()
    print("gfnet predict: ok")

    for argv, needs in ((["flops", "--preset", "digits"], "gfnet flops needs fvcore"),
                        (["eval", str(ckpt)], "gfnet eval (it calibrates exits on MACs) needs fvcore")):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = cli.main(argv)
        assert code == 2 and needs in err.getvalue() and "not installed" in err.getvalue(), err.getvalue()
        print(f"gfnet {argv[0]}: refused: {err.getvalue().strip()}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
