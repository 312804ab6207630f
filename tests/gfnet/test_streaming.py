"""The streaming engine and ``gfnet predict`` at scale: streaming results equal the per-batch
engine's image by image; predictions stream into DIR/predictions.jsonl, unreadable files are
recorded, an interrupted run resumes with no image lost or repeated, torchrun shards merge."""

from __future__ import annotations

import json
import random

import pytest
import torch
from gfnet.config import build_config
from gfnet.data import ClutteredDigits
from gfnet.inference import (
    MAX_GLANCE_FACTOR,
    StreamStats,
    anytime_inference,
    confidences,
    copy_rows,
    dynamic_inference,
    streaming_inference,
)
from gfnet.models import build_model
from PIL import Image

import gfnet
import gfnet.bulk_predict as predict_module
from gfnet.bulk_predict import find_images, predict_folder

from .conftest import tiny_overrides
from .test_predictor import _checkpoint

N_FILES = 30


# ---------------------------------------------------------------------- the engine
@pytest.fixture(scope="module", params=["gru", "concat"])
def engine_setup(request):
    """A tiny digits model (its GRU classifier with per-step heads, or the concatenating one),
    random images and their confidences at every step."""
    torch.manual_seed(0)
    cfg = build_config("digits", overrides=tiny_overrides(**{"model.classifier": request.param}))
    model = build_model(cfg.model).eval()
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (40, 1, 128, 128), generator=g, dtype=torch.uint8)
    return model, images, confidences(anytime_inference(model, images).logits)


def _random_thresholds(conf: torch.Tensor, rng: random.Random) -> list[float]:
    """For each step but the last: a threshold halfway between two neighbouring confidences
    (never equal to one, so float rounding cannot flip an exit), or +inf / 0 now and then."""
    out = []
    for t in range(conf.shape[0] - 1):
        c = sorted(conf[t].tolist())
        k = rng.randrange(-1, len(c))
        out.append(float("inf") if k == -1 else 0.0 if k == 0 else (c[k - 1] + c[k]) / 2)
    return out


def _in_input_order(rows):
    ids = torch.cat([r.ids for r in rows])
    order = ids.argsort()
    return (ids[order], torch.cat([r.exit_step for r in rows])[order], torch.cat([r.logits for r in rows])[order],
            torch.cat([r.boxes for r in rows])[order])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("pool_size", [1, 3, 16, 64])  # 64: a pool larger than the input
def test_streaming_matches_dynamic_image_by_image(engine_setup, seed, pool_size, monkeypatch):
    model, images, conf = engine_setup
    rng = random.Random(seed)
    n = rng.choice([1, 7, 40])  # one image, a few, all of them
    images = images[:n]
    thr = _random_thresholds(conf[:, :n], rng)
    ref = dynamic_inference(model, images, thr)
    cuts = sorted(rng.sample(range(1, n), min(3, n - 1))) if n > 1 else []
    batches = [images[a:b] for a, b in zip([0, *cuts], [*cuts, n])]  # batches of uneven sizes
    syncs = []
    real = gfnet.inference.host_counts
    monkeypatch.setattr(gfnet.inference, "host_counts", lambda nk: syncs.append(1) or real(nk))
    stats = StreamStats()
    rows = list(streaming_inference(model, iter(batches), thr, pool_size=pool_size, stats=stats))
    ids, exit_step, logits, boxes = _in_input_order(rows)
    assert torch.equal(ids, torch.arange(n))  # every image once
    assert torch.equal(exit_step, ref.exit_step)
    torch.testing.assert_close(logits, ref.logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(boxes.isnan(), ref.boxes.isnan())
    torch.testing.assert_close(boxes[~boxes.isnan()], ref.boxes[~ref.boxes.isnan()])
    assert stats.exit_counts == ref.exit_counts and stats.images == n
    assert len(syncs) == stats.engine_steps  # one host sync per engine step
    # no row waits: a row glanced at engine step s finishes at engine step s + exit_step - 1
    for r in rows:
        assert torch.equal(r.finished - r.admitted + 1, r.exit_step)


def test_streaming_keeps_focus_batches_full(engine_setup):
    """Half the images exit at every step: the per-batch engine's focus steps run on what is
    left of a batch (half, then a quarter), the streaming engine's on a refilled pool."""
    model, images, conf = engine_setup
    thr = [float(conf[t].median()) + 1e-6 for t in range(conf.shape[0] - 1)]
    pool = 8
    stats = StreamStats()
    list(streaming_inference(model, [images], thr, pool_size=pool, stats=stats))
    per_batch = [dynamic_inference(model, images[i:i + pool], thr).reached() for i in range(0, 40, pool)]
    per_batch_mean = sum(sum(r[1:]) for r in per_batch) / sum(sum(1 for x in r[1:] if x) for r in per_batch)
    assert stats.mean_focus_batch > per_batch_mean
    assert stats.step_rows == [40, 40 - stats.exit_counts[0], stats.exit_counts[2]]


def test_streaming_admission_keeps_about_b_rows_in_flight(engine_setup):
    """Over a long stream with steady exit rates the focus steps run on about B rows each: the
    admission glances as many new images as the rows expected to leave (it does not stop
    while B rows are in flight, which would leave the next focus step their survivors only)."""
    model, images, conf = engine_setup
    thr = [float(conf[t].median()) + 1e-6 for t in range(conf.shape[0] - 1)]
    pool = 8
    stream = images.repeat(8, 1, 1, 1)  # 320 images, the same exit pattern over and over
    stats = StreamStats()
    list(streaming_inference(model, stream.split(5), thr, pool_size=pool, stats=stats))
    assert sum(stats.exit_counts) == 320
    assert stats.mean_focus_batch >= 0.8 * pool
    assert stats.focus_rows <= stats.focus_steps * (MAX_GLANCE_FACTOR + 1) * pool


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float16, torch.float32, torch.bool])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 5, 7), (2, 3, 4), (1, 1, 1)])
def test_copy_rows_equals_index_copy(dtype, shape):
    """The pool refill moves rows as machine words where their bytes allow (8, 4, 2, or one at a
    time for odd sizes), from contiguous and strided batches, to exactly index_copy_'s result."""
    g = torch.Generator().manual_seed(len(shape) + shape[-1])
    dest = (torch.rand(11, *shape, generator=g) * 200).to(dtype)
    src = (torch.rand(5, *shape[::-1], generator=g) * 200).to(dtype).permute(0, 3, 2, 1)  # strided
    rows = torch.randperm(11, generator=g)[:5]
    expected = dest.clone().index_copy_(0, rows, src)
    copy_rows(dest, rows, src)
    assert torch.equal(dest, expected)
    copy_rows(dest, rows[:0], src[:0])  # no rows: nothing moves
    assert torch.equal(dest, expected)


def test_streaming_rejects_what_it_cannot_pool(engine_setup):
    model, images, _ = engine_setup
    with pytest.raises(ValueError, match="pool_size"):
        list(streaming_inference(model, [images], pool_size=0))
    with pytest.raises(ValueError, match=r"batches\[1\]"):
        list(streaming_inference(model, [images[:2], images[0]]))
    with pytest.raises(ValueError, match="like the first"):
        list(streaming_inference(model, [images[:2], images[:2, :, :64]]))
    assert list(streaming_inference(model, [])) == []


# ---------------------------------------------------------------------- the predictor
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = build_config("digits", overrides=tiny_overrides())
    val = torch.stack([ClutteredDigits("val", length=32)[i][0] for i in range(32)])
    return _checkpoint(tmp_path_factory.mktemp("ck") / "stage3.pt", cfg, val)


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return gfnet.load(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """N_FILES digit canvases as PNG files, some in a nested folder, and a text file beside them."""
    root = tmp_path_factory.mktemp("images")
    ds = ClutteredDigits("test", length=N_FILES)
    for i in range(N_FILES):
        folder = root / "nested" / "deeper" if i % 3 == 0 else root
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ds[i][0][0].numpy()).save(folder / f"digit{i:02d}.png")
    (root / "notes.txt").write_text("not an image: not searched")
    return root


def test_stream_equals_the_call_image_by_image(predictor, image_folder):
    paths = find_images([image_folder])
    assert len(paths) == N_FILES and all(p.endswith(".png") for p in paths)
    ref = {p.input: p for p in predictor(paths, budget=20)}
    stats = StreamStats()
    got = list(predictor.stream(iter(paths), budget=20, batch_size=8, stats=stats))
    assert sorted(p.input for p in got) == sorted(ref)
    assert len({p.exit_step for p in got}) > 1  # the budget splits the images over the steps
    for p in got:
        r = ref[p.input]
        assert (p.class_index, p.exit_step, p.boxes, p.macs) == (r.class_index, r.exit_step, r.boxes, r.macs)
        torch.testing.assert_close(p.logits, r.logits, rtol=1e-5, atol=1e-5)
    assert sum(stats.exit_counts) == N_FILES
    # resize=False: the per-batch engine, batch by batch, in input order
    own = list(predictor.stream(paths[:5], budget=20, resize=False, batch_size=2))
    assert [p.input for p in own] == paths[:5] and all(p.model_size == (128, 128) for p in own)


# ---------------------------------------------------------------------- gfnet predict at scale
def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_predict_folder_records_a_broken_file_and_goes_on(checkpoint, predictor, image_folder, tmp_path):
    broken = tmp_path / "in" / "broken.png"
    broken.parent.mkdir()
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    listed = tmp_path / "list.txt"
    listed.write_text(f"{broken}\n\n{tmp_path / 'missing.png'}\n")
    out = tmp_path / "out"
    summary = predict_folder(checkpoint, [image_folder], files_from=listed, out=out, budget=20, workers=1,
                             batch_size=8, progress=False)
    rows = {r["image"]: r for r in _rows(out / "predictions.jsonl")}
    assert len(rows) == N_FILES + 2 and summary["predicted"] == N_FILES and summary["errors"] == 2
    assert "cannot read image" in rows[str(broken)]["error"]
    assert "does not exist" in rows[str(tmp_path / "missing.png")]["error"]
    ref = predictor(find_images([image_folder]), budget=20)
    for r in ref:
        row = rows[r.input]
        assert (row["class_index"], row["exit_step"], row["class_name"]) == (r.class_index, r.exit_step, r.class_name)
        assert row["confidence"] == pytest.approx(r.confidence, abs=1e-6)
        assert row["boxes"] == [list(b) for b in r.boxes] and row["macs"] == r.macs
    assert not list(out.glob("*.png"))  # more than 16 images: no pictures unless asked


def test_interrupted_run_resumes_with_no_image_lost_or_repeated(checkpoint, image_folder, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    predict_folder(checkpoint, [image_folder], out=whole, budget=20, workers=0, batch_size=4, progress=False)
    expected = {r["image"]: r for r in _rows(whole / "predictions.jsonl")}
    assert len(expected) == N_FILES

    out = tmp_path / "interrupted"
    real_write = predict_module._ResultsFile.write
    written = []

    def ctrl_c_after_a_third(self, row):
        if len(written) == N_FILES // 3:
            raise KeyboardInterrupt
        written.append(row["image"])
        real_write(self, row)

    monkeypatch.setattr(predict_module._ResultsFile, "write", ctrl_c_after_a_third)
    with pytest.raises(KeyboardInterrupt):
        predict_folder(checkpoint, [image_folder], out=out, budget=20, workers=0, batch_size=4, progress=False)
    monkeypatch.setattr(predict_module._ResultsFile, "write", real_write)
    kept = _rows(out / "predictions.jsonl")
    assert [r["image"] for r in kept] == written and len(kept) == N_FILES // 3  # what was written is kept
    with open(out / "predictions.jsonl", "a") as f:  # a run killed mid-line leaves half a row
        f.write('{"image": "half a ro')
    summary = predict_folder(checkpoint, [image_folder], out=out, budget=20, workers=0, batch_size=4,
                             progress=False)
    assert summary["skipped"] == N_FILES // 3 and summary["predicted"] == N_FILES - N_FILES // 3
    rows = _rows(out / "predictions.jsonl")
    assert sorted(r["image"] for r in rows) == sorted(expected)  # none lost, none repeated
    for r in rows:
        e = expected[r["image"]]
        assert (r["class_index"], r["exit_step"], r["boxes"]) == (e["class_index"], e["exit_step"], e["boxes"])
        assert r["confidence"] == pytest.approx(e["confidence"], abs=1e-6)
    # a third run has nothing left to do; --overwrite starts over
    assert predict_folder(checkpoint, [image_folder], out=out, budget=20, workers=0, progress=False)["predicted"] == 0
    again = predict_folder(checkpoint, [image_folder], out=out, budget=20, workers=0, progress=False, overwrite=True)
    assert again["predicted"] == N_FILES and len(_rows(out / "predictions.jsonl")) == N_FILES


def test_csv_format_resumes_too(checkpoint, image_folder, tmp_path):
    import csv

    paths = find_images([image_folder])
    out = tmp_path / "csv"
    predict_folder(checkpoint, paths[:10], out=out, fmt="csv", budget=20, workers=0, progress=False)
    with open(out / "predictions.csv", "a") as f:
        f.write("half,a,ro")
    s = predict_folder(checkpoint, paths, out=out, fmt="csv", budget=20, workers=0, progress=False)
    assert s["skipped"] == 10 and s["predicted"] == N_FILES - 10
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["image"] for r in rows) == sorted(paths)
    assert all(len(json.loads(r["boxes"])) == int(r["exit_step"]) for r in rows)


def test_ranks_split_the_inputs_and_the_last_merges(checkpoint, image_folder, tmp_path):
    """What torchrun's ranks do (RANK / WORLD_SIZE), run one after the other here."""
    out = tmp_path / "ranks"
    first = predict_folder(checkpoint, [image_folder], out=out, budget=20, workers=0, progress=False, rank=1,
                           world_size=2)
    assert first["merged"] is None and (out / "predictions.rank1.jsonl").is_file()
    assert first["images"] == N_FILES // 2
    second = predict_folder(checkpoint, [image_folder], out=out, budget=20, workers=0, progress=False, rank=0,
                            world_size=2)
    assert second["merged"] == str(out / "predictions.jsonl")
    assert not list(out.glob("predictions.rank*")) and not list(out.glob(".predictions*"))
    rows = _rows(out / "predictions.jsonl")
    assert sorted(r["image"] for r in rows) == sorted(find_images([image_folder]))


def test_small_runs_draw_and_print_as_before(checkpoint, image_folder, tmp_path):
    paths = find_images([image_folder])[:3]
    lines = []
    s = predict_folder(checkpoint, paths, out=tmp_path / "small", budget=20, workers=0, progress=False,
                       log=lines.append)
    assert s["predicted"] == 3 and len(list((tmp_path / "small").glob("*.png"))) == 3
    assert sum("exit step" in line for line in lines) == 3
    rows = _rows(tmp_path / "small" / "predictions.jsonl")
    assert all((tmp_path / "small" / r["picture"].rsplit("/", 1)[1]).is_file() for r in rows)
    big = predict_folder(checkpoint, [image_folder], out=tmp_path / "big", budget=20, workers=0, progress=False,
                         pictures=2)
    assert big["predicted"] == N_FILES and len(list((tmp_path / "big").glob("*.png"))) == 2


def test_bad_arguments_are_named(checkpoint, image_folder, tmp_path):
    from gfnet.errors import GFNetError

    with pytest.raises(GFNetError, match="does not exist"):
        find_images([tmp_path / "nope"])
    with pytest.raises(GFNetError, match="--format"):
        predict_folder(checkpoint, [tmp_path], fmt="xml")
    with pytest.raises(GFNetError, match="--files-from"):
        find_images([], files_from=tmp_path / "no-list.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(GFNetError, match="no images"):
        predict_folder(checkpoint, [empty], out=tmp_path / "o")
    out = tmp_path / "notours"
    out.mkdir()
    (out / "predictions.jsonl").write_text("my own notes\n")
    with pytest.raises(GFNetError, match="not a prediction"):
        predict_folder(checkpoint, [image_folder], out=out, progress=False, workers=0)
    assert (out / "predictions.jsonl").read_text() == "my own notes\n"  # left as it was
