"""The main job end to end, shortened: `gfnet demo` (what `make demo` runs) with one epoch of a
few batches per stage, then every artefact it writes is checked, and a rerun reuses them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .conftest import REPO, subprocess_env, tiny_overrides

PNG = b"\x89PNG\r\n\x1a\n"
ONE_IMAGE = 1 / 40 + 1e-9  # the shortened demo's test split has 40 images


def _demo(out: Path, *extra: str) -> subprocess.CompletedProcess:
    sets = []
    for s in tiny_overrides(**{"run.max_train_batches": 2, "data.val_samples": 48, "data.test_samples": 40}):
        sets += ["--set", s]
    cmd = [sys.executable, "-m", "gfnet", "demo", "--out", str(out), "--epochs", "1", "--no-progress",
           "--images", "3", "--passes", "1", *sets, *extra]
    return subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=600)


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    proc = _demo(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def test_demo_trains_every_stage_and_the_baseline(demo):
    out, proc = demo
    for k in (1, 2, 3):
        ck = torch.load(out / f"stage{k}.pt", weights_only=True)
        assert ck["done"] and ck["kind"] == "gfnet" and ck["stage"] == k
    base = torch.load(out / "baseline.pt", weights_only=True)
    assert base["done"] and base["kind"] == "baseline"
    ev = json.loads((out / "eval" / "eval.json").read_text())
    assert 0.0 <= base["test_accuracy"] <= 1.0 and base["macs"] == ev["static_macs"]  # same backbone
    # GFNet's encoders start from the trained baseline (the paper: from ImageNet-trained weights)
    assert torch.load(out / "stage1.pt", weights_only=True)["config"]["model"]["init_from"] == str(out / "baseline.pt")
    assert proc.stdout.index("gfnet demo 1/4: train the static baseline") < proc.stdout.index("gfnet demo 2/4: train GFNet")
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"stage1", "stage2", "stage3", "baseline"}
    assert len(results["stage3"]["policy"]) == 3 and len(results["baseline"]["static"]) == 1
    for k in range(1, 5):
        assert f"gfnet demo {k}/4" in proc.stdout


def test_demo_evaluates_every_budget(demo):
    out, _ = demo
    ev = json.loads((out / "eval" / "eval.json").read_text())
    assert [r["budget"] for r in ev["budgets"]] == list(range(1, 40))
    assert ev["test_samples"] == 40 and ev["baseline_macs"] > sum(ev["step_macs"])
    assert ev["calibration"] == {"split": "val", "samples": 48}  # digits' val split is not its test split
    assert (out / "eval" / "eval.csv").read_text().count("\n") == 40
    assert _is_png(out / "eval" / "eval.png")
    assert "exit_thresholds" in torch.load(out / "stage3.pt", weights_only=True)  # stored for predict


def test_demo_report(demo):
    out, proc = demo
    r = json.loads((out / "report.json").read_text())
    assert set(r["claims"]) == {"accuracy_within_1pt_at_40pct_macs", "dynamic_throughput_2x_baseline"}
    assert all(isinstance(v, bool) for v in r["claims"].values())
    op = r["operating_point"]
    assert op["budget"] in range(1, 40) and op["macs_fraction"] == pytest.approx(op["avg_macs"] / r["baseline"]["macs"])
    # the engines timed on the same 40 test images at every batch size; the dynamic one at the
    # operating point (and where it first matches the baseline, if that is another budget)
    engines = [t["engine"] for t in r["throughput"]]
    assert engines[:3] == ["static baseline", "GFNet, all 3 steps", f"GFNet dynamic, budget {op['budget']}"]
    mp = r["matching_point"]
    assert engines[3:] == ([] if mp is None or mp["budget"] == op["budget"] else [f"GFNet dynamic, budget {mp['budget']}"])
    assert r["batch_sizes"] == [8, 16, 64, 128] and len(r["throughput_by_batch"]) == 4 * len(engines)
    for t in r["throughput_by_batch"]:
        assert t["images"] == 40 and t["seconds"] > 0 and t["images_per_s"] > 0 and 0 <= t["accuracy"] <= 1
    for t in r["throughput"]:  # each engine at its best batch size
        same = [x for x in r["throughput_by_batch"] if x["engine"] == t["engine"]]
        assert t["images_per_s"] == max(x["images_per_s"] for x in same)
        # the batch size changes nothing else (up to one image whose confidence sits on a threshold
        # and moves by a rounding difference of another convolution blocking)
        assert all(abs(x["accuracy"] - t["accuracy"]) <= ONE_IMAGE for x in same)
    static, all_steps, dynamic = r["throughput"][:3]
    assert static["avg_macs"] == pytest.approx(r["baseline"]["macs"])
    assert all_steps["avg_macs"] == pytest.approx(sum(r["gfnet"]["step_macs"]))
    assert r["gfnet"]["step_macs"][0] <= dynamic["avg_macs"] <= all_steps["avg_macs"]
    assert r["speedup_vs_baseline"] == pytest.approx(dynamic["images_per_s"] / static["images_per_s"])
    # the dynamic engine agrees with the evaluation's accuracy on the same (whole) test split
    assert dynamic["accuracy"] == pytest.approx(op["accuracy"], abs=ONE_IMAGE)
    assert all_steps["accuracy"] == pytest.approx(r["gfnet"]["anytime_accuracy"][-1], abs=ONE_IMAGE)
    assert static["accuracy"] == pytest.approx(r["baseline"]["test_accuracy"], abs=ONE_IMAGE)
    # pictures of the glance and patches, via gfnet predict's path
    assert len(r["samples"]) == 3
    for s in r["samples"]:
        assert _is_png(Path(s["picture"])) and _is_png(Path(s["image"]))
        assert 1 <= s["exit_step"] <= 3 and len(s["boxes"]) == s["exit_step"] and 0 <= s["label"] <= 9
    assert _is_png(out / "report" / "accuracy_vs_flops.png")
    md = (out / "report.md").read_text()
    assert "started from the baseline's trained weights" in md
    assert "thresholds set on the 48 images of the val split (not the test split);" in md  # digits: a real val split
    for heading in ("## The claims", "## Accuracy against average MACs", "## Realised throughput",
                    "## What the model looked at", "## Reproduce"):
        assert heading in md
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 1 + 3 and all(_is_png(out / link) for link in links)
    assert md.count("| budget ") + md.count("| **budget ") == 39
    assert "wrote" in proc.stdout and str(out / "report.md") in proc.stdout


def test_demo_rerun_reuses_finished_work(demo):
    out, _ = demo
    before = {k: (out / f"stage{k}.pt").stat().st_mtime_ns for k in (1, 2)}
    base_before = (out / "baseline.pt").stat().st_mtime_ns
    proc = _demo(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for k in (1, 2, 3):
        assert f"stage {k}: already complete" in proc.stderr
    assert "baseline: already complete" in proc.stderr
    assert "using the thresholds stored in" in proc.stdout
    assert {k: (out / f"stage{k}.pt").stat().st_mtime_ns for k in (1, 2)} == before
    assert (out / "baseline.pt").stat().st_mtime_ns == base_before


def test_make_demo_runs_gfnet_demo():
    """`make demo` is the set-up (as for `make test`) then this command."""
    proc = subprocess.run(["make", "-n", "demo"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"-m gfnet demo --out runs/demo", proc.stdout), proc.stdout
    assert "pip install" in proc.stdout  # the build step precedes it
