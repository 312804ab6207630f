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
from gfnet.demo import headline_margin, wall_time

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


def demo_of_recipe(out: Path, policy_training: str, announced: str) -> dict:
    """The demo with ``optim.policy_training``: it says ``announced``, writes a full report
    (claims, budgets, throughput), and gfnet.load predicts with its model. Returns the report."""
    import gfnet

    proc = _demo(out, "--set", f"optim.policy_training={policy_training}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert announced in proc.stdout + proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert set(report["claims"]) and report["budgets"] and report["speedup_vs_baseline"] > 0
    predictor = gfnet.load(out / "stage3.pt")
    assert len(predictor(list(torch.randint(0, 255, (2, 1, 128, 128), dtype=torch.uint8)))) == 2
    return report


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
    assert (proc.stdout.index("gfnet demo 1/4: train the static baseline")
            < proc.stdout.index("gfnet demo 2/4: train GFNet"))
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
    assert set(r["claims"]) == {"accuracy_within_1pt_at_40pct_macs", "dynamic_throughput_2x_baseline",
                                "baseline_at_least_95pct", "glance_at_most_85pct", "last_step_at_least_95pct",
                                "policy_beats_random_by_10pts_at_step_2"}
    assert all(isinstance(v, bool) for v in r["claims"].values())
    op = r["operating_point"]
    assert op["budget"] in range(1, 40) and op["macs_fraction"] == pytest.approx(op["avg_macs"] / r["baseline"]["macs"])
    # the engines timed on the same 40 test images at every batch size; the dynamic one at the
    # operating point (and where it first matches the baseline, if that is another budget)
    engines = [t["engine"] for t in r["throughput"]]
    assert engines[:3] == ["static baseline", "GFNet, all 3 steps", f"GFNet dynamic, budget {op['budget']}"]
    mp = r["matching_point"]
    matching = [] if mp is None or mp["budget"] == op["budget"] else [f"GFNet dynamic, budget {mp['budget']}"]
    assert engines[3:] == matching
    assert r["batch_sizes"] == [16, 64, 128] and len(r["throughput_by_batch"]) == 3 * len(engines)
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
    # pictures of the glance and patches, via gfnet predict's path: some exiting at the glance,
    # some that looked (as far as the test split has them), the first of each kind
    assert len(r["samples"]) == 3
    for s in r["samples"]:
        assert _is_png(Path(s["picture"])) and _is_png(Path(s["image"]))
        assert 1 <= s["exit_step"] <= 3 and len(s["boxes"]) == s["exit_step"] and 0 <= s["label"] <= 9
        assert 0 <= s["test_index"] < 40 and f"test_{s['test_index']:04d}_" in Path(s["image"]).name
    indices = [s["test_index"] for s in r["samples"]]
    assert indices == sorted(set(indices))
    assert _is_png(out / "report" / "accuracy_vs_flops.png")
    md = (out / "report.md").read_text()
    assert "started from the baseline's trained weights" in md
    assert "thresholds set on the 48 images of the val split (not the test split);" in md  # digits: a real val split
    for heading in ("## The claims", "## Accuracy against average MACs", "## Realised throughput",
                    "## Training", "## What the model looked at", "## Reproduce"):
        assert heading in md
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 2 + 3 and all(_is_png(out / link) for link in links)  # 2 plots, 3 samples
    assert md.count("| budget ") + md.count("| **budget ") == 39
    assert "wrote" in proc.stdout and str(out / "report.md") in proc.stdout


def test_demo_report_random_locations_and_digit_hits(demo):
    """Looking matters: the learned policy against uniformly random focus locations, per step,
    and how often each one's first focus patch holds the digit; in the JSON, the page and the plot."""
    out, _ = demo
    r = json.loads((out / "report.json").read_text())
    acc, rnd = r["gfnet"]["anytime_accuracy"], r["random_policy"]["anytime_accuracy"]
    assert isinstance(rnd, list) and len(rnd) == len(acc) == r["gfnet"]["steps"] == 3
    assert all(isinstance(a, float) and 0.0 <= a <= 1.0 for a in rnd)
    assert all(abs(40 * a - round(40 * a)) < 1e-6 for a in rnd)  # a count of the 40 test images
    assert r["random_policy"]["test_samples"] == r["gfnet"]["test_samples"] == 40
    assert rnd[0] == pytest.approx(acc[0], abs=ONE_IMAGE)  # the same model: the glance is the same
    # the learned policy on the same (here: all) test images is gfnet eval's anytime accuracy
    learned = r["random_policy"]["policy_anytime_accuracy"]
    assert len(learned) == 3 and all(a == pytest.approx(b, abs=ONE_IMAGE) for a, b in zip(learned, acc))
    hit = r["object_in_first_patch"]
    assert set(hit) == {"policy", "random", "min_fraction_of_object", "test_samples"}
    assert all(isinstance(hit[k], float) and 0.0 <= hit[k] <= 1.0 for k in ("policy", "random"))
    assert hit["min_fraction_of_object"] == 0.5 and hit["test_samples"] == 40
    claims = r["claims"]
    assert claims["glance_at_most_85pct"] == (acc[0] <= 0.85)
    assert claims["last_step_at_least_95pct"] == (acc[-1] >= 0.95)
    assert claims["policy_beats_random_by_10pts_at_step_2"] == (learned[1] - rnd[1] >= 0.10 - 1e-12)
    assert claims["baseline_at_least_95pct"] == (r["baseline"]["test_accuracy"] >= 0.95)
    md = (out / "report.md").read_text()
    assert "## Does looking matter?" in md and "| step | MACs so far (M) | learned policy | random locations" in md
    assert (f"{100 * hit['policy']:.2f} % of the test images with the learned policy, {100 * hit['random']:.2f} % "
            "with random locations") in md
    for claim in ("The glance alone at most 85 %", "The last step (all 3 steps) at least 95 %",
                  "beats uniformly random focus locations by at least 10 points at step 2",
                  "The baseline itself at least 95 %"):
        assert claim in md
    from PIL import Image

    with Image.open(out / "report" / "accuracy_vs_flops.png") as im:
        curves = im.text["Description"]
    assert "anytime, random focus locations" in curves and "anytime, step k" in curves


def test_report_on_part_of_the_test_split_compares_like_with_like(demo):
    """--max-images 20: the learned policy and the random locations both on those 20 images."""
    from gfnet.cli import main

    out, _ = demo
    assert main(["report", str(out), "--out", str(out / "part"), "--max-images", "20", "--passes", "1",
                 "--batch-sizes", "8", "--images", "2", "--threads", "1"]) == 0
    r = json.loads((out / "part" / "report.json").read_text())
    rp = r["random_policy"]
    assert rp["test_samples"] == r["object_in_first_patch"]["test_samples"] == 20 and r["gfnet"]["test_samples"] == 40
    assert all(abs(20 * a - round(20 * a)) < 1e-6 for a in rp["anytime_accuracy"] + rp["policy_anytime_accuracy"])
    assert r["claims"]["policy_beats_random_by_10pts_at_step_2"] == (
        rp["policy_anytime_accuracy"][1] - rp["anytime_accuracy"][1] >= 0.10 - 1e-12)
    assert all(s["test_index"] < 20 for s in r["samples"]) and len(r["samples"]) == 2


def test_claims_belong_to_demo_runs(demo, tmp_path):
    """The general report states facts; the demo's claims are checked in a run `gfnet demo` made
    (its wall clock in the folder), by the demo and by `gfnet report` on it, and nowhere else."""
    import shutil

    from gfnet.cli import main
    from gfnet.demo import DEMO_CLAIMS, WALL_TIME_FILE, is_demo_run

    out, _ = demo
    assert is_demo_run(out)
    r = json.loads((out / "report.json").read_text())
    assert r["claims"] == DEMO_CLAIMS.check(r) and "## The claims" in (out / "report.md").read_text()
    copy = tmp_path / "trained"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("report*", "part", WALL_TIME_FILE))
    assert not is_demo_run(copy)
    assert main(["report", str(copy), "--max-images", "8", "--passes", "1", "--batch-sizes", "8",
                 "--images", "0", "--threads", "1"]) == 0
    facts = json.loads((copy / "report.json").read_text())
    md = (copy / "report.md").read_text()
    assert "claims" not in facts and "## The claims" not in md and "gfnet demo --preset" not in md


def test_pick_samples_mixes_glance_exits_and_looks():
    from gfnet.report import pick_samples

    exit_step = torch.tensor([1, 1, 3, 1, 2, 1, 3, 2, 1])
    assert pick_samples(exit_step, 4) == [0, 1, 2, 4]  # two at the glance, then steps 2 and 3 in turn
    assert pick_samples(exit_step, 5) == [0, 1, 2, 4, 7]
    assert pick_samples(torch.tensor([1, 1, 1, 2]), 3) == [0, 1, 3]  # short of looks: glance exits fill in
    assert pick_samples(torch.tensor([2, 3, 1, 3]), 3) == [0, 1, 2]  # short of glance exits: looks fill in
    assert pick_samples(exit_step, 0) == [] and pick_samples(torch.tensor([1, 2]), 5) == [0, 1]


def test_fraction_holding_counts_half_the_digit():
    from gfnet.report import fraction_holding

    digit = torch.tensor([[10.0, 10.0, 20.0, 20.0]] * 4)
    patches = torch.tensor([[0.0, 0.0, 48.0, 48.0],  # all of it
                            [15.0, 0.0, 63.0, 48.0],  # half (x 15..20)
                            [16.0, 0.0, 64.0, 48.0],  # 40 %
                            [30.0, 30.0, 78.0, 78.0]])  # none
    assert fraction_holding(patches, digit) == 0.5
    assert fraction_holding(patches[:1], digit[:1]) == 1.0 and fraction_holding(patches[3:], digit[3:]) == 0.0


def test_demo_rerun_reuses_finished_work(demo):
    out, _ = demo
    before = {k: (out / f"stage{k}.pt").stat().st_mtime_ns for k in (1, 2)}
    base_before = (out / "baseline.pt").stat().st_mtime_ns
    proc = _demo(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for k in (1, 2, 3):
        assert f"stage {k}: already complete" in proc.stderr
    assert "baseline: already complete" in proc.stderr
    assert "report.json reused" in proc.stdout  # the report is newer than what it reports on
    assert {k: (out / f"stage{k}.pt").stat().st_mtime_ns for k in (1, 2)} == before
    assert (out / "baseline.pt").stat().st_mtime_ns == base_before


def test_make_demo_runs_gfnet_demo():
    """`make demo` is the set-up (as for `make test`) then this command."""
    proc = subprocess.run(["make", "-n", "demo"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"-m gfnet demo --out runs/demo", proc.stdout), proc.stdout
    assert "pip install" in proc.stdout  # the build step precedes it
    # and builds the CUDA kernels only where torch sees a GPU (setup.py's GFKERNELS_CUDA=gpu)
    db = subprocess.run(["make", "-pn", "demo"], cwd=REPO, capture_output=True, text=True).stdout
    assert re.search(r"^demo: GFKERNELS_CUDA \?= gpu$|^demo: GFKERNELS_CUDA = gpu$", db, re.M)


def test_demo_report_training_curves(demo):
    """The report draws every stage's loss and validation accuracy per epoch from metrics.jsonl
    and lists what they warn of (the shortened demo learns nothing: near-chance warnings)."""
    out, _ = demo
    r = json.loads((out / "report.json").read_text())
    curves = r["training"]["curves"]
    assert [c["stage"] for c in curves] == [0, 1, 2, 3]
    assert [c["val_mode"] for c in curves] == ["static", "random", "policy", "policy"]
    for c in curves:  # one epoch per stage; the baseline trains stage-1 + stage-3 epochs
        assert c["epochs"] == ([1, 2] if c["stage"] == 0 else [1]) and len(c["loss"]) == len(c["epochs"])
        assert all(len(acc) == (1 if c["stage"] == 0 else 3) for acc in c["val_accuracy"])
    assert _is_png(Path(r["training"]["plot"])) and Path(r["training"]["plot"]).name == "training_curves.png"
    assert all(isinstance(w, str) for w in r["training"]["warnings"])
    md = (out / "report.md").read_text()
    for c in curves:
        assert f"| {c['label']} | {c['epochs'][-1]} |" in md


def test_demo_over_seeds_writes_the_spread(tmp_path):
    """`gfnet demo --seeds 0,1`: one shortened demo per seed, then every headline figure per run
    and its min / median / max, and the claims judged per run from each run's own report."""
    out = tmp_path / "spread"
    proc = _demo(out, "--seeds", "0,1", "--threads", "1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    spread = json.loads((out / "spread.json").read_text())
    runs = spread["runs"]
    assert [(r["seed"], r["threads"]) for r in runs] == [(0, 1), (1, 1)]
    for r in runs:
        run_dir = out / f"seed{r['seed']}-threads1"
        report = json.loads((run_dir / "report.json").read_text())
        assert report["threads"] == 1
        assert torch.load(run_dir / "stage1.pt", weights_only=True)["config"]["run"]["seed"] == r["seed"]
        assert r["claims"] == report["claims"] and r["claims_met"] == all(report["claims"].values())
        assert r["glance"] == report["gfnet"]["anytime_accuracy"][0]
        assert r["baseline"] == report["baseline"]["test_accuracy"]
        assert r["best_budget_macs"] == pytest.approx(report["operating_point"]["macs_fraction"])
        assert r["headline_margin"] == pytest.approx(headline_margin(report))
        assert (r["headline_margin"] >= 0) == report["claims"]["accuracy_within_1pt_at_40pct_macs"]
        assert r["minutes"] > 0 and r["minutes"] == pytest.approx(wall_time(run_dir) / 60)
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert {row["stage"] for row in rows} == {0, 1, 2, 3}
        assert all("val_accuracy" in row and "val_mode" in row for row in rows)
    for key, s in spread["spread"].items():
        values = sorted(r[key] for r in runs)
        assert s["min"] == values[0] and s["max"] == values[-1]
        assert s["median"] == pytest.approx((values[0] + values[1]) / 2)
    md = (out / "spread.md").read_text()
    assert "| 0 | 1 |" in md and "| 1 | 1 |" in md and "| figure | min | median | max |" in md
    assert f"Every claim met in {sum(r['claims_met'] for r in runs)} of 2 run(s)." in md
    assert f"every claim met in {sum(r['claims_met'] for r in runs)} of 2 runs" in proc.stdout
    # run again: every run is finished, so its report is reused, not rebuilt
    before = (out / "seed0-threads1" / "report.json").read_bytes()
    again = _demo(out, "--seeds", "0,1", "--threads", "1")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("report.json reused") == 2
    assert (out / "seed0-threads1" / "report.json").read_bytes() == before
    assert json.loads((out / "spread.json").read_text())["runs"][0]["glance"] == runs[0]["glance"]
    # --collect: the spread of the finished runs only, training nothing (seed 5 never ran)
    collected = _demo(out, "--seeds", "1,5,0", "--threads", "1", "--collect")
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-3000:]
    table = json.loads((out / "spread.json").read_text())
    assert [r["seed"] for r in table["runs"]] == [1, 0] and table["missing"] == ["seed5-threads1"]
    assert [r["glance"] for r in table["runs"]] == [runs[1]["glance"], runs[0]["glance"]]
    assert not (out / "seed5-threads1" / "stage1.pt").exists()
    assert "Not finished, left out: seed5-threads1." in (out / "spread.md").read_text()
    # the two seeds trained different models
    w0 = torch.load(out / "seed0-threads1" / "stage1.pt", weights_only=True)["model"]
    w1 = torch.load(out / "seed1-threads1" / "stage1.pt", weights_only=True)["model"]
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)


def test_headline_margin_is_the_best_budget_within_the_macs_limit_against_the_allowed_accuracy():
    report = {"baseline": {"test_accuracy": 0.99, "macs": 100.0},
              "budgets": [{"accuracy": 0.975, "avg_macs": 20.0}, {"accuracy": 0.985, "avg_macs": 40.0},
                          {"accuracy": 0.992, "avg_macs": 41.0}]}
    # 98.5 % at exactly 40 % of the MACs, against the 98 % the claim allows: +0.5 points; the
    # 99.2 % budget is over the limit and does not count
    assert headline_margin(report) == pytest.approx(0.5)
    report["budgets"] = report["budgets"][:1]
    assert headline_margin(report) == pytest.approx(-0.5)


def test_demo_wall_time_sums_every_piece_of_a_run(tmp_path):
    """A demo finished in pieces (interrupted, then resumed) reports the time of all of them."""
    from gfnet.demo import WALL_TIME_FILE, _WallClock
    assert wall_time(tmp_path) == 0.0
    (tmp_path / WALL_TIME_FILE).write_text(json.dumps({"seconds": 100.0}))
    clock = _WallClock(tmp_path / WALL_TIME_FILE)
    clock.start -= 5.0  # this piece has run for 5 s
    clock.save()
    assert 105.0 <= wall_time(tmp_path) < 106.0


def test_demo_threads_needs_seeds(tmp_path):
    proc = _demo(tmp_path / "x", "--threads", "1")
    assert proc.returncode == 2 and "--threads goes with --seeds" in proc.stderr
    proc = _demo(tmp_path / "x", "--collect")
    assert proc.returncode == 2 and "--collect goes with --seeds" in proc.stderr
    proc = _demo(tmp_path / "x", "--seeds", "0", "--collect")
    assert proc.returncode == 2 and "no finished demo run under" in proc.stderr
