"""Prediction at scale: ``gfnet predict`` streaming over image files, and the streaming engine.

    # the figures (3000 files; run on an idle machine, about 10-20 minutes on 2 CPU cores):
    OMP_NUM_THREADS=1 .venv/bin/python -m pytest bench/test_bench_predict_stream.py --benchmark-only
    # a quick check that it runs (the figures mean nothing at this size):
    GFNET_BENCH_FILES=64 GFNET_BENCH_IMAGES=128 .venv/bin/python -m pytest bench/test_bench_predict_stream.py \
        --benchmark-only

Model: the digits preset (128 x 128 grayscale, 3 steps), random weights with batch norm settled
as in test_bench_inference, exit thresholds set on its own confidences so that 50 / 30 / 20 %
of the images exit at steps 1 / 2 / 3; or a trained checkpoint (the demo's run, e.g.
runs/demo/gfnet) named by GFNET_BENCH_CHECKPOINT, at its stored budget 20.

Group ``predict_files_cpu`` (GFNET_BENCH_FILES PNG files, default 3000; images/s in extra_info):
    predict_streaming   gfnet predict's library function end to end (load included): DataLoader
                        workers decode and resize, the streaming engine, predictions.jsonl
    per_batch_pipeline  the same decode pipeline into the per-batch engine (dynamic_inference)
    predictor_call      today's Python path: gfnet.load(...)(paths)
    static_baseline     the same decode pipeline into the static baseline (the backbone on the
                        whole image, random weights: its cost, not its answers)
Groups ``engine_digits_cpu_b{16,64,256}`` (GFNET_BENCH_IMAGES in-memory images, default 1024):
    streaming  streaming_inference, pool B;  per_batch  dynamic_inference, B at a time;
    all_steps  anytime_inference, B at a time.
test_peak_memory: ``gfnet predict`` as a fresh process on N and 3N files (N = files / 3): its
peak resident memory, and its decoding workers', in extra_info; the target is within 25 %.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from gfnet.exits import confidences, thresholds_for_fractions
from gfnet.config import build_config
from gfnet.data import ClutteredDigits
from gfnet.inference import StreamStats, anytime_inference, dynamic_inference, streaming_inference
from gfnet.models import build_model
from gfnet.models.static import build_static_baseline
from gfnet.bulk_predict import _DecodeDataset, _WorkerBatch, find_images, predict_folder
from PIL import Image

import gfnet
from bench.harness import MEDIANS, Target, add_targets, run_case
from bench.test_bench_inference import _settle_batch_norm

FILES = int(os.environ.get("GFNET_BENCH_FILES", "3000"))
IMAGES = int(os.environ.get("GFNET_BENCH_IMAGES", "1024"))
CHECKPOINT = os.environ.get("GFNET_BENCH_CHECKPOINT")
FRACTIONS = (0.5, 0.3, 0.2)
BATCH = 64
WORKERS = max(1, min(8, (os.cpu_count() or 2) - 1))
REPO = Path(__file__).resolve().parents[1]

add_targets(Target("predict_files_cpu", "predict_streaming", "per_batch_pipeline", 1.0,
                   "gfnet predict's streaming engine at least as fast as the per-batch one, same pipeline"),
            Target("predict_files_cpu", "predict_streaming", "predictor_call", 1.0,
                   "gfnet predict no slower than today's gfnet.load(...)(paths)"))
for _b in (16, 64, 256):
    add_targets(Target(f"engine_digits_cpu_b{_b}", "streaming", "per_batch", 1.0,
                       "the streaming engine at least as fast as the per-batch engine at the same B"))

_CACHE: dict = {}


def _setup(tmp_root: Path):
    """(checkpoint, thresholds or None for the stored budget, folder of FILES PNGs, model)."""
    if "setup" in _CACHE:
        return _CACHE["setup"]
    folder = tmp_root / "images"
    folder.mkdir(parents=True)
    ds = ClutteredDigits("test", length=min(FILES, 500))
    for i in range(FILES):
        sub = folder / f"{i // 1000:02d}"  # a thousand files a folder, searched recursively
        sub.mkdir(exist_ok=True)
        Image.fromarray(ds[i % len(ds)][0][0].numpy()).save(sub / f"{i:05d}.png")
    if CHECKPOINT:
        predictor = gfnet.load(CHECKPOINT, device="cpu")
        ck, thr = CHECKPOINT, None
    else:
        from tests.gfnet.conftest import save_gfnet_checkpoint

        cfg = build_config("digits")
        torch.manual_seed(0)
        model = build_model(cfg.model)
        calib = torch.stack([ds[i % len(ds)][0] for i in range(64)])
        _settle_batch_norm(model, calib[:32])
        thr = thresholds_for_fractions(confidences(anytime_inference(model, calib).logits), FRACTIONS)
        ck = save_gfnet_checkpoint(tmp_root / "stage3.pt", cfg, model, stage=3, done=True)
        predictor = gfnet.load(ck, device="cpu")
    predictor.step_macs  # noqa: B018 - counted once, before any timing
    _CACHE["setup"] = (ck, thr, folder, predictor)
    return _CACHE["setup"]


def _pipeline(predictor, paths):
    dataset = _DecodeDataset(paths, predictor.channels, predictor.cfg.model, predictor._eval_settings, True)
    return torch.utils.data.DataLoader(dataset, batch_size=BATCH, num_workers=WORKERS,
                                       collate_fn=_WorkerBatch(stack=True), prefetch_factor=2)


@pytest.mark.parametrize("case", ["predict_streaming", "per_batch_pipeline", "predictor_call", "static_baseline"])
def test_predict_files(benchmark, tmp_path_factory, case):
    ck, thr, folder, predictor = _setup(tmp_path_factory.mktemp("predict"))
    paths = find_images([folder])
    rule = predictor.exit_rule(budget=None if thr is not None else 20, threshold=thr)
    out = tmp_path_factory.mktemp("out")
    static = build_static_baseline(predictor.cfg.model).eval() if case == "static_baseline" else None

    def per_batch():
        with torch.inference_mode():
            for _, stacked, _ in _pipeline(predictor, paths):
                dynamic_inference(predictor.model, stacked, rule.thresholds)

    def baseline():
        with torch.inference_mode():
            for _, stacked, _ in _pipeline(predictor, paths):
                static(stacked)

    fns = {
        "predict_streaming": lambda: predict_folder(ck, [folder], out=out, thresholds=thr,
                                                    budget=None if thr is not None else 20, workers=WORKERS,
                                                    batch_size=BATCH, progress=False, overwrite=True),
        "per_batch_pipeline": per_batch,
        "predictor_call": lambda: predictor(paths, threshold=rule.thresholds, batch_size=BATCH),
        "static_baseline": baseline,
    }
    run_case(benchmark, "predict_files_cpu", case, fns[case], rounds=3, warmup_rounds=1)
    med = MEDIANS["predict_files_cpu"][case]
    benchmark.extra_info.update(files=len(paths), workers=WORKERS, batch=BATCH, images_per_s=round(len(paths) / med, 1))
    if case == "predict_streaming":
        rows = (out / "predictions.jsonl").read_text().splitlines()
        assert len(rows) == len(paths)


@pytest.mark.parametrize("case", ["streaming", "per_batch", "all_steps"])
@pytest.mark.parametrize("pool", [16, 64, 256])
def test_engine_in_memory(benchmark, tmp_path_factory, pool, case):
    ck, thr, folder, predictor = _setup(tmp_path_factory.mktemp("predict"))
    model = predictor.model
    thresholds = predictor.exit_rule(budget=None if thr is not None else 20, threshold=thr).thresholds
    ds = ClutteredDigits("test", length=min(IMAGES, 500))
    images = torch.stack([ds[i % len(ds)][0] for i in range(IMAGES)])
    chunks = list(images.split(pool))
    stats = StreamStats()

    fns = {
        "streaming": lambda: sum(len(r) for r in streaming_inference(model, chunks, thresholds, pool_size=pool,
                                                                     stats=stats)),
        "per_batch": lambda: [dynamic_inference(model, c, thresholds) for c in chunks],
        "all_steps": lambda: [anytime_inference(model, c) for c in chunks],
    }
    group = f"engine_digits_cpu_b{pool}"
    run_case(benchmark, group, case, fns[case], rounds=3, warmup_rounds=1)
    med = MEDIANS[group][case]
    benchmark.extra_info.update(images=IMAGES, pool=pool, images_per_s=round(IMAGES / med, 1))
    if case == "streaming":
        benchmark.extra_info.update(mean_focus_batch=round(stats.mean_focus_batch, 1),
                                    exit_counts=stats.exit_counts)
    if case == "per_batch":
        reached = [dynamic_inference(model, c, thresholds).reached() for c in chunks]
        benchmark.extra_info["mean_focus_batch"] = round(
            sum(sum(r[1:]) for r in reached) / max(sum(sum(1 for x in r[1:] if x) for r in reached), 1), 1)


_MEASURE = """
import json, resource, sys
from gfnet.bulk_predict import predict_folder
paths = [line.rstrip("\\n") for line in open(sys.argv[1])]
thr = json.loads(sys.argv[4])
predict_folder(sys.argv[2], paths, out=sys.argv[3], thresholds=thr, budget=None if thr else 20,
               workers=int(sys.argv[5]), progress=False)
print(json.dumps({"self_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "workers_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def test_peak_memory(benchmark, tmp_path_factory):
    """Peak resident memory of gfnet predict on N and 3N files, each a fresh process."""
    root = tmp_path_factory.mktemp("memory")
    ck, thr, folder, _ = _setup(tmp_path_factory.mktemp("predict"))
    paths = find_images([folder])
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO / "python"), str(REPO), os.environ.get("PYTHONPATH", "")]))
    peaks = {}
    for n in (len(paths) // 3, len(paths)):
        listing = root / f"list{n}.txt"
        listing.write_text("".join(p + "\n" for p in paths[:n]))
        out = subprocess.run([sys.executable, "-c", _MEASURE, str(listing), str(ck), str(root / f"out{n}"),
                              json.dumps(thr), str(WORKERS)], env=env, capture_output=True, text=True, check=True)
        peaks[n] = json.loads(out.stdout.strip().splitlines()[-1])
    small, large = sorted(peaks)
    ratio = peaks[large]["self_kib"] / peaks[small]["self_kib"]
    benchmark.extra_info.update(files={str(k): v for k, v in peaks.items()}, ratio_self=round(ratio, 3))
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)  # the figures are in extra_info
    print(f"peak RSS: {small} files {peaks[small]['self_kib'] / 1024:.0f} MiB, {large} files "
          f"{peaks[large]['self_kib'] / 1024:.0f} MiB (x{ratio:.3f}); workers {peaks[small]['workers_kib'] / 1024:.0f}"
          f" / {peaks[large]['workers_kib'] / 1024:.0f} MiB")
    assert ratio <= 1.25
