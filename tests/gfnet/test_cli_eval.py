"""`gfnet eval`, `gfnet predict` and `gfnet flops` end to end on a checkpoint trained for a few steps."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from gfnet.cli import main

from .conftest import tiny_overrides


def _sets(*extra: str) -> list[str]:
    out: list[str] = []
    for o in tiny_overrides() + list(extra):
        out += ["--set", o]
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    rc = main(["train", "--preset", "digits", "--epochs", "1", "--out", str(out),
               *_sets("run.max_train_batches=1")])
    assert rc == 0 and (out / "stage3.pt").is_file()
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from gfnet.config import build_config
    from gfnet.data import build_datasets
    from PIL import Image

    d = tmp_path_factory.mktemp("img")
    ds = build_datasets(build_config("digits", overrides=tiny_overrides()), ("test",))["test"]
    paths = []
    for i in range(2):
        x, _ = ds[i]
        p = d / f"digit{i}.png"
        Image.fromarray(x[0].numpy()).save(p)
        paths.append(str(p))
    Image.fromarray(ds[2][0][0].numpy()).resize((100, 150)).save(d / "odd_size.png")  # resized + cropped
    paths.append(str(d / "odd_size.png"))
    return paths


def test_eval_writes_table_plot_and_stores_thresholds(run_dir, tmp_path, capsys):
    out = run_dir / "ev"  # inside the run's folder: the thresholds are stored in its checkpoint
    # --target-macs 3 (M): between the tiny digits model's glance (1.6 M) and all its steps (4.9 M)
    rc = main(["eval", str(run_dir), "--out", str(out), "--budgets", "1,20,39",
               "--target-macs", "3", "--baseline-acc", "0.5"])
    assert rc == 0
    summary = json.loads((out / "eval.json").read_text())
    assert [r["budget"] for r in summary["budgets"]] == [1, 20, 39, None]
    T = len(summary["step_macs"])
    for r in summary["budgets"]:
        assert sum(r["exit_counts"]) == summary["test_samples"] == 8
        assert 0.0 <= r["accuracy"] <= 1.0
        reached, left = [], sum(r["exit_counts"])
        for c in r["exit_counts"]:
            reached.append(left)
            left -= c
        hand = sum(n * m for n, m in zip(reached, summary["step_macs"])) / 8
        assert r["avg_macs"] == pytest.approx(hand)
        assert r["avg_flops"] == pytest.approx(2 * hand)
    assert len(summary["anytime_accuracy"]) == T
    with open(out / "eval.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and "avg_flops" in rows[0]
    assert (out / "eval.png").stat().st_size > 1000
    ck = torch.load(run_dir / "stage3.pt", weights_only=True)
    assert [p["budget"] for p in ck["exit_thresholds"]["points"]] == list(range(1, 40))
    assert "calibrated 39 budgets" in capsys.readouterr().out
    # the second run reuses the stored thresholds; the simulated (official) way gives the same table
    rc = main(["eval", str(run_dir / "stage3.pt"), "--out", str(tmp_path / "ev2"), "--budgets", "20",
               "--simulate"])
    assert rc == 0
    assert "using the thresholds stored" in capsys.readouterr().out
    sim = json.loads((tmp_path / "ev2" / "eval.json").read_text())["budgets"][0]
    dyn = summary["budgets"][1]
    assert sim["exit_counts"] == dyn["exit_counts"] and sim["accuracy"] == dyn["accuracy"]


def test_predict_prints_and_draws(run_dir, images, tmp_path, capsys):
    out = tmp_path / "pred"
    rc = main(["predict", str(run_dir), *images, "--out", str(out), "--thresholds", "0.0,0.0"])
    assert rc == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "exit step" in ln]
    assert len(lines) == 3 and all("exit step 1/3" in ln for ln in lines)
    assert len(list(out.glob("*.png"))) == 3
    rc = main(["predict", str(run_dir), images[0], "--out", str(out)])  # stored or no thresholds
    assert rc == 0
    capsys.readouterr()
    # one number: every step's threshold, as predictor(threshold=0.0) takes it
    assert main(["predict", str(run_dir), *images, "--out", str(tmp_path / "one"), "--thresholds", "0.0"]) == 0
    again = [ln for ln in capsys.readouterr().out.splitlines() if "exit step" in ln]
    assert [ln.split(" -> ")[0] for ln in again] == [ln.split(" -> ")[0] for ln in lines]


def test_train_baseline_and_plot_it(run_dir, tmp_path, capsys):
    out = tmp_path / "bl"
    rc = main(["train", "--baseline", "--preset", "digits", "--epochs", "1", "--out", str(out),
               *_sets("run.max_train_batches=1")])
    assert rc == 0 and (out / "baseline.pt").is_file()
    assert "static baseline" in capsys.readouterr().out
    ev = tmp_path / "ev"
    rc = main(["eval", str(run_dir), "--out", str(ev), "--budgets", "20", "--baseline", str(out / "baseline.pt")])
    assert rc == 0
    summary = json.loads((ev / "eval.json").read_text())
    ck = torch.load(out / "baseline.pt", weights_only=True)
    assert summary["baseline_accuracy"] == ck["test_accuracy"]
    assert summary["baseline_macs"] == ck["macs"] == summary["static_macs"]  # same backbone, same size
    # a GFNet checkpoint is not a baseline
    assert main(["eval", str(run_dir), "--out", str(ev), "--baseline", str(run_dir / "stage1.pt")]) == 2
    assert "not a baseline checkpoint" in capsys.readouterr().err


def test_the_commands_are_library_functions(run_dir, images, tmp_path, capsys):
    """What eval and predict print and write comes from functions a user can call: silent
    unless given a log, returning what the files hold."""
    from gfnet.evaluate import evaluate_run
    from gfnet.bulk_predict import predict_files

    summary = evaluate_run(run_dir, out=tmp_path / "ev", budgets=[20], target_macs=[3e6], simulate=True,
                           store=False)
    assert summary == json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert [r["budget"] for r in summary["budgets"]] == [20, None]
    r = predict_files(run_dir, images[:2], thresholds=[0.0, 0.0], out=tmp_path / "pred")
    assert r["thresholds"] == "given" and r["steps"] == 3
    assert [p["exit_step"] for p in r["predictions"]] == [1, 1]
    assert all(Path(p["picture"]).parent == tmp_path / "pred" and Path(p["picture"]).is_file()
               for p in r["predictions"])
    assert capsys.readouterr().out == ""


def test_flops_command(capsys):
    assert main(["flops", "--preset", "digits"]) == 0
    text = capsys.readouterr().out
    assert "MACs (M)" in text and "FLOPs (M)" in text and "glance" in text


@pytest.mark.parametrize("argv, message", [
    (["eval", "{missing}"], "does not exist"),
    (["eval", "{run}", "--budgets", "40"], "out of range"),
    (["eval", "{run}", "--budgets", "0"], "out of range"),
    (["eval", "{run}", "--target-macs", "1e9"], "out of range"),
    (["predict", "{run}", "{nofile}"], "does not exist"),
    (["predict", "{run}", "{img}", "--budget", "99"], "out of range"),
    (["predict", "{run}", "{img}", "--thresholds", "0.5,0.6,0.7,0.8"], "needs one number, 2 values"),
    (["predict", "{missing}", "{img}"], "does not exist"),
])
def test_bad_input_is_a_clear_error(run_dir, images, tmp_path, capsys, argv, message):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    subst = {"missing": str(tmp_path / "nope.pt"), "run": str(run_dir), "bad": str(bad),
             "nofile": str(tmp_path / "none.png"), "img": images[0]}
    rc = main([a.format(**subst) for a in argv])
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_parsing_the_command_line_imports_no_torch():
    """``gfnet --help`` and ``--list-presets`` stay quick: building the parser imports no torch."""
    import subprocess
    import sys

    from .conftest import subprocess_env

    code = "import sys; from gfnet.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_predict_help_names_the_predictors_batch_size(capsys):
    """--batch-size defaults to predictor.DEFAULT_BATCH_SIZE (read when predict runs, so that
    parsing imports no torch); its help states the number."""
    from gfnet.predictor import DEFAULT_BATCH_SIZE

    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert f"(default {DEFAULT_BATCH_SIZE})" in " ".join(capsys.readouterr().out.split())


# ---------------------------------------------------------------------- outputs (issue 21)
def test_eval_elsewhere_writes_nothing_outside_out(run_dir, tmp_path, capsys):
    """gfnet eval RUN --out X leaves RUN/stage3.pt as it was (the thresholds are in X/eval.json),
    even when it has to calibrate."""
    ck = run_dir / "stage3.pt"
    before, stat = ck.read_bytes(), ck.stat()
    out = tmp_path / "elsewhere"
    rc = main(["eval", str(run_dir), "--out", str(out), "--budgets", "20", "--recalibrate", "--simulate"])
    assert rc == 0
    assert "not stored" in capsys.readouterr().out
    assert ck.read_bytes() == before and ck.stat().st_mtime_ns == stat.st_mtime_ns
    assert json.loads((out / "eval.json").read_text())["budgets"][0]["budget"] == 20


def test_eval_never_replaces_a_symlinked_checkpoint(run_dir, tmp_path, capsys):
    """Evaluating a run whose stage3.pt is a link: the link stays a link, its target unchanged."""
    run = tmp_path / "linked"
    run.mkdir()
    (run / "stage3.pt").symlink_to(run_dir / "stage3.pt")
    before = (run_dir / "stage3.pt").read_bytes()
    assert main(["eval", str(run), "--budgets", "20", "--recalibrate", "--simulate"]) == 0
    assert "symbolic link" in capsys.readouterr().out
    assert (run / "stage3.pt").is_symlink() and (run_dir / "stage3.pt").read_bytes() == before


def test_outputs_never_go_through_links_or_over_a_users_files(run_dir, images, tmp_path, capsys):
    """A link at OUT/000_digit0.png or OUT/eval.json, or a user's file there, is refused (exit 2,
    nothing written anywhere); --force replaces the link itself, never its target; a rerun
    replaces the command's own files."""
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "000_digit0.png").symlink_to(victim)
    rc = main(["predict", str(run_dir), images[0], "--out", str(pred), "--thresholds", "0.0,0.0"])
    assert rc == 2 and "symbolic link" in capsys.readouterr().err
    assert victim.read_text() == "mine" and (pred / "000_digit0.png").is_symlink()
    rc = main(["predict", str(run_dir), images[0], "--out", str(pred), "--thresholds", "0.0,0.0", "--force"])
    assert rc == 0
    assert victim.read_text() == "mine" and not (pred / "000_digit0.png").is_symlink()
    # a rerun that starts over replaces its own picture; a user's file of that name is refused
    # (a plain rerun resumes: the image is done, nothing is drawn)
    again = ["predict", str(run_dir), images[0], "--out", str(pred), "--thresholds", "0.0,0.0", "--overwrite"]
    assert main(again) == 0
    (pred / "000_digit0.png").write_bytes(b"user's drawing")
    assert main(again) == 2
    assert "did not write" in capsys.readouterr().err
    assert (pred / "000_digit0.png").read_bytes() == b"user's drawing"

    ev = tmp_path / "ev"
    ev.mkdir()
    (ev / "eval.json").symlink_to(victim)
    assert main(["eval", str(run_dir), "--out", str(ev), "--budgets", "20", "--simulate"]) == 2
    assert victim.read_text() == "mine" and not (ev / "eval.csv").exists()
    assert main(["eval", str(run_dir), "--out", str(ev), "--budgets", "20", "--simulate", "--force"]) == 0
    assert victim.read_text() == "mine" and json.loads((ev / "eval.json").read_text())["budgets"]
    assert main(["eval", str(run_dir), "--out", str(ev), "--budgets", "20", "--simulate"]) == 0  # ours now


def test_a_full_disk_is_a_clear_error_with_no_partial_files(run_dir, images, tmp_path, capsys, monkeypatch):
    """ENOSPC while writing eval.json or a picture: one error line saying so and naming the file,
    no zero-byte or temporary files left, an earlier file of ours kept whole."""
    import errno
    import os

    import gfnet.files

    ev = tmp_path / "ev"
    assert main(["eval", str(run_dir), "--out", str(ev), "--budgets", "20", "--simulate"]) == 0
    first = (ev / "eval.json").read_bytes()
    real_write = os.write

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gfnet.files.os, "write", full)
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--out", str(ev), "--budgets", "20", "--simulate"]) == 2
    err = capsys.readouterr().err
    assert "no space left on device" in err and str(ev / "eval.json") in err and "Traceback" not in err
    assert (ev / "eval.json").read_bytes() == first
    pred = tmp_path / "pred"
    assert main(["predict", str(run_dir), images[0], "--out", str(pred), "--thresholds", "0.0,0.0"]) == 2
    assert "no space left on device" in capsys.readouterr().err
    monkeypatch.setattr(gfnet.files.os, "write", real_write)
    leftovers = [p.name for d in (ev, pred) for p in d.iterdir()
                 if p.name.endswith(".tmp") or p.stat().st_size == 0]
    assert leftovers == []
    assert not (pred / "000_digit0.png").exists()
