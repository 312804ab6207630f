"""The wheel: `pip wheel --no-build-isolation --no-deps .` gives one wheel holding gfkernels
(with its compiled _C) and gfnet, and that wheel works in a fresh virtual environment that
shares the installed torch but not the source tree."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import sysconfig
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation",
                    "--no-deps", ROOT, "-w", str(out)], check=True, cwd=ROOT)
    wheels = glob.glob(str(out / "*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_holds_both_packages(wheel):
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("gfkernels/_C") and n.endswith(".so") for n in names)
    assert "gfkernels/reference.py" in names and "gfkernels/triton/crop_resize.py" in names
    assert "gfnet/cli.py" in names and "gfnet/models/gfnet.py" in names
    assert any(n.endswith("entry_points.txt") for n in names)


def test_wheel_runs_in_a_fresh_venv(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # Share this environment's packages (torch & co.) without its .pth hooks, so the editable
    # install of the source tree stays invisible: gfkernels and gfnet come from the wheel.
    with open(os.path.join(site, "shared_env.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--target", site, wheel], check=True)
    script = textwrap.dedent("""
        import os, torch, gfkernels, gfnet
        assert "site-packages" in gfkernels.__file__ and "site-packages" in gfnet.__file__, (
            gfkernels.__file__, gfnet.__file__)
        assert "cpp" in gfkernels.build_info()["backends"]
        images = torch.rand(2, 3, 20, 20)
        boxes = torch.tensor([[0.0, 0.0, 20.0, 20.0], [2.0, 3.0, 10.0, 11.0]])
        out = gfkernels.crop_resize(images, boxes, 8, mode="bicubic")
        ref = gfkernels.reference.crop_resize(images, boxes, 8, mode="bicubic")
        torch.testing.assert_close(out, ref)
        from gfnet.config import build_config
        from gfnet.models.gfnet import build_model
        cfg = build_config("digits")
        model = build_model(cfg.model).eval()
        size = cfg.model.image_size
        images = torch.randint(0, 256, (2, cfg.model.in_channels, size, size), dtype=torch.uint8)
        with torch.no_grad():
            logits = model(images)
        assert len(logits) == cfg.model.max_steps and logits[-1].shape == (2, 10)
        print("ok", gfkernels.__file__)
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([str(python), "-c", script], cwd=str(tmp_path), env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok")
    cli = subprocess.run([str(python), "-m", "gfnet", "train", "--list-presets"],
                         cwd=str(tmp_path), env=env, capture_output=True, text=True)
    assert cli.returncode == 0 and "digits" in cli.stdout, cli.stderr[-2000:]
