"""Classifying image files with a trained run at any scale: what ``gfnet predict`` does,
callable from Python (the Predictor itself, ``gfnet.load``, is in ``gfnet/predictor.py``).

    result = predict_files("runs/digits", ["a.png", "b.png"], budget=5, out="predict")
    summary = predict_folder("runs/digits", ["photos/"], out="preds", budget=5)  # streaming

The images go through the predictor (``gfnet.load``, ``gfnet/predictor.py``): the dynamic
engine with the exit thresholds of a budget (stored in the checkpoint by an evaluation),
explicit thresholds, a target average MACs, or none (every image runs all steps); a picture of
its glance and focus patches is written per image.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from .device import set_threads
from .errors import DataError, GFNetError
from .files import OutputFolder, disk_full_message, is_disk_full
from .flops import FVCORE_MISSING
from .inference import StreamStats
from .data.inputs import PreparedImage, prepare_image
from .predictor import DEFAULT_BATCH_SIZE, load


def predict_files(checkpoint: str | Path, images: Sequence[str], *, budget: int | None = None,
                  thresholds: float | Sequence[float] | None = None, target_macs: float | None = None,
                  out: str | Path = "predict", device: str | None = None,
                  class_names: str | Path | Sequence[str] | None = None,
                  batch_size: int = DEFAULT_BATCH_SIZE, resize: bool = True,
                  force: bool = False, precision: str = "fp32", layout: str = "auto") -> dict[str, Any]:
    """Classify image files (any format PIL reads) with the checkpoint (file or run folder).

    Returns ``{"thresholds": where they come from, "steps": T, "predictions": [...]}`` with a
    row per image: image, prediction (class index), class_name, confidence, exit_step (1 .. T),
    boxes looked at (in the image file's pixels), macs (None without fvcore), picture (the PNG of the model's input
    with its glance and patches, in ``out``). class_names: a names file (or list) for a
    checkpoint without names. The pictures are written as ``gfnet.files.OutputFolder`` writes:
    only inside ``out``, atomically, never through a symbolic link, never over a file a
    prediction did not write unless ``force=True``; every name is checked before any work.
    """
    from .viz import prediction_picture, prediction_picture_name

    images = list(images)
    folder = OutputFolder(out, force=force, command="gfnet predict")
    names = [prediction_picture_name(i, str(name)) for i, name in enumerate(images)]
    for name in names:
        folder.target(name)  # refuse before the work, not after it
    predictor = load(checkpoint, device, class_names=class_names, precision=precision, layout=layout)
    set_threads(predictor.cfg.run.threads)
    result = predictor(images, budget=budget, threshold=thresholds, target_macs=target_macs,
                       batch_size=batch_size, resize=resize, keep_inputs=True)
    rows = []
    for i, p in enumerate(result):
        png = io.BytesIO()
        prediction_picture(png, i, p.input, p.model_input.cpu(), torch.tensor(p.model_boxes),
                           predictor.cfg.model, exit_step=p.exit_step,
                           label=f"{p.class_name} ({p.confidence:.2f}), exit at step {p.exit_step}")
        pic = folder.write(names[i], png.getbuffer())
        rows.append({"image": p.input, "prediction": p.class_index, "class_name": p.class_name,
                     "confidence": p.confidence, "exit_step": p.exit_step,
                     "boxes": [list(b) for b in p.boxes], "macs": p.macs, "picture": str(pic)})
    return {"thresholds": result.exit_rule.source, "steps": predictor.steps, "predictions": rows}




# ---------------------------------------------------------------------- at any scale
PREDICTIONS = "predictions"  # DIR/predictions.jsonl (or .csv); predictions.rank{k}.* under torchrun
CSV_FIELDS = ["image", "class_index", "class_name", "confidence", "exit_step", "macs", "boxes", "picture",
              "error"]
SMALL_RUN = 16  # runs of at most this many images draw every picture and print every result
FLUSH_EVERY_S = 1.0  # results reach the file at least this often


def image_extensions() -> frozenset[str]:
    """The file extensions PIL reads (lower case, with the dot): what a folder search takes."""
    from PIL import Image

    return frozenset(ext.lower() for ext in Image.registered_extensions())


def find_images(inputs: Sequence[str | Path], files_from: str | Path | None = None) -> list[str]:
    """The image paths of ``inputs``: files as given, folders searched recursively (sorted) for
    files PIL reads, then the lines of ``files_from`` (one path per line, blank lines skipped).
    A path given twice is taken once. A named file or folder that does not exist is an error;
    a listed file that does not exist is recorded as an error when its turn comes."""
    extensions = image_extensions()
    out: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                out.extend(os.path.join(root, f) for f in sorted(files)
                           if os.path.splitext(f)[1].lower() in extensions)
        elif path.exists():
            out.append(str(item))
        else:
            raise DataError(f"input {str(item)!r} does not exist")
    if files_from is not None:
        try:
            with open(files_from, encoding="utf-8") as f:
                out.extend(line.rstrip("\r\n") for line in f if line.strip())
        except OSError as e:
            raise DataError(f"--files-from {str(files_from)!r}: cannot read it ({e.strerror})") from None
    return list(dict.fromkeys(out))


class _DecodeDataset(torch.utils.data.Dataset):
    """Image i of ``paths`` decoded and brought to the model's input in a DataLoader worker, as
    the predictor prepares it (``predictor.prepare_image``): (i, the prepared image or None,
    the error message or None)."""

    def __init__(self, paths: Sequence[str], channels: int, model_cfg: Any, settings: tuple, resize: bool):
        self.paths, self.channels, self.model_cfg, self.settings = paths, channels, model_cfg, settings
        self.resize = resize

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.paths[i]
        try:
            return i, prepare_image(path, path, self.channels, self.model_cfg, self.settings, self.resize), None
        except GFNetError as e:
            return i, None, str(e)
        except Exception as e:  # any decoder's failure is this one file's, never the run's
            return i, None, f"cannot read image {path!r} ({type(e).__name__}: {e})"


class _WorkerBatch:
    """A decoding worker's batch as it crosses to the main process: ``(entries, stacked,
    errors)``, entries ``(i, input, geometry, image)`` per readable image, errors ``(i,
    message)``. With ``stack`` (every image resized to the model's size) the images travel as
    one tensor, ``stacked``, and each entry's image is None: a tensor crosses processes through
    its own shared-memory segment and socket hand-over, about a millisecond per image on a
    small CPU, more than the engine spends on it. Without, each entry carries its image and
    ``stacked`` is None."""

    def __init__(self, stack: bool):
        self.stack = stack

    def __call__(self, items):
        good = [(i, p) for i, p, error in items if error is None]
        errors = [(i, error) for i, _, error in items if error is not None]
        if self.stack and good:
            stacked = torch.stack([p.image for _, p in good])
            return [(i, p.input, p.geometry, None) for i, p in good], stacked, errors
        return [(i, p.input, p.geometry, p.image) for i, p in good], None, errors


def prepared_images(entries, stacked: torch.Tensor | None) -> list[PreparedImage]:
    """The PreparedImages of a worker batch's entries (their images views of ``stacked``)."""
    return [PreparedImage(name, stacked[k] if stacked is not None else image, geometry)
            for k, (_, name, geometry, image) in enumerate(entries)]


class _ResultsFile:
    """DIR/predictions.jsonl (or .csv): read back to resume, appended a row per image, flushed
    regularly. Only whole lines count: a half-written last line (a run killed mid-write) is
    dropped when the file is resumed."""

    def __init__(self, path: Path, fmt: str):
        self.path, self.fmt = path, fmt
        self._file = None
        self._writer = None
        self._last_flush = time.monotonic()

    def check(self) -> None:
        if self.path.is_symlink():
            raise GFNetError(f"{str(self.path)!r} is a symbolic link; gfnet predict does not write through "
                             "links: remove it or choose another --out")
        if self.path.is_dir():
            raise GFNetError(f"{str(self.path)!r} is a folder; gfnet predict writes its results there: move it "
                             "or choose another --out")

    def done(self, *, repair: bool) -> set[str]:
        """The images the file holds. repair: cut a half-written last line off (only the file
        this process appends to; another rank's shard may be mid-write)."""
        if not self.path.is_file():
            return set()
        data = self.path.read_bytes()
        whole = data.rfind(b"\n") + 1  # the end of the last whole line
        if repair and whole < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(whole)
        text = data[:whole].decode("utf-8", errors="replace")
        if self.fmt == "csv":
            rows = list(csv.DictReader(io.StringIO(text)))
            if text and (not rows and not text.startswith("image,") or rows and "image" not in rows[0]):
                raise GFNetError(f"{str(self.path)!r} is not a predictions file gfnet predict wrote: move it, "
                                 "or pass --overwrite to start over")
            return {r["image"] for r in rows}
        images = set()
        for k, line in enumerate(text.splitlines(), 1):
            try:
                images.add(json.loads(line)["image"])
            except (ValueError, KeyError, TypeError):
                raise GFNetError(f"line {k} of {str(self.path)!r} is not a prediction gfnet predict wrote: move "
                                 "the file, or pass --overwrite to start over") from None
        return images

    def write(self, row: dict[str, Any]) -> None:
        try:
            if self._file is None:  # opened on the first row: a run that writes nothing leaves no file
                new = not self.path.exists() or self.path.stat().st_size == 0
                self._file = open(self.path, "a", encoding="utf-8", newline="")
                if self.fmt == "csv":
                    self._writer = csv.DictWriter(self._file, CSV_FIELDS, extrasaction="ignore")
                    if new:
                        self._writer.writeheader()
            if self.fmt == "csv":
                flat = dict(row)
                if "boxes" in flat:
                    flat["boxes"] = json.dumps(flat["boxes"])
                self._writer.writerow(flat)
            else:
                self._file.write(json.dumps(row) + "\n")
            if time.monotonic() - self._last_flush >= FLUSH_EVERY_S:
                self._file.flush()
                self._last_flush = time.monotonic()
        except OSError as e:
            raise self._error(e) from None

    def _error(self, e: OSError) -> GFNetError:
        if is_disk_full(e):
            return GFNetError(disk_full_message(self.path))
        return GFNetError(f"cannot write {str(self.path)!r} ({e.strerror})")

    def close(self) -> None:
        if self._file is None:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as e:
            raise self._error(e) from None
        finally:
            self._file.close()
            self._file = None


def _merge_shards(folder: Path, fmt: str) -> Path:
    """DIR/predictions.<fmt> = its own rows, then every rank's shard's whole rows, written to a
    temporary file and renamed over it (never half-merged); the shards are removed after."""
    target = folder / f"{PREDICTIONS}.{fmt}"
    shards = sorted(folder.glob(f"{PREDICTIONS}.rank*.{fmt}"))
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            header_written = False
            for src in ([target] if target.is_file() else []) + shards:
                data = src.read_bytes()
                data = data[:data.rfind(b"\n") + 1]
                if fmt == "csv":
                    header, _, body = data.partition(b"\n")
                    if not header_written and header:
                        out.write(header + b"\n")
                        header_written = True
                    data = body
                out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if is_disk_full(e):
            raise GFNetError(disk_full_message(target)) from None
        raise
    for src in shards:
        src.unlink(missing_ok=True)
    return target


def _torchrun_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) of this process under torchrun, else (0, 1, 0)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def _exit_mix(counts: list[int]) -> str:
    total = sum(counts) or 1
    return " ".join(f"{k}:{100 * c / total:.0f}%" for k, c in enumerate(counts, 1))


def predict_folder(checkpoint: str | Path, inputs: Sequence[str | Path] = (), *, out: str | Path = "predict",
                   files_from: str | Path | None = None, budget: int | None = None,
                   thresholds: float | Sequence[float] | None = None, target_macs: float | None = None,
                   device: str | None = None, class_names: str | Path | Sequence[str] | None = None,
                   batch_size: int = DEFAULT_BATCH_SIZE, resize: bool = True, workers: int | None = None,
                   fmt: str = "jsonl", pictures: int | None = None, overwrite: bool = False,
                   force: bool = False, progress: bool = True, rank: int | None = None,
                   world_size: int | None = None, log=None, precision: str = "fp32",
                   layout: str = "auto") -> dict[str, Any]:
    """Classify every image of ``inputs`` (files, folders searched recursively) and of
    ``files_from`` into ``out``/predictions.jsonl (or .csv with ``fmt="csv"``), at any scale.

    The files are decoded and resized in ``workers`` DataLoader processes (default: the cores
    but one, at most 8; 0 decodes in this process) while the streaming engine
    (``Predictor.stream_prepared``) runs: memory stays flat in the number of images. Each image's
    row (image, class_index, class_name, confidence, exit_step, macs, boxes in the file's
    pixels, picture) is appended as it finishes and the file is flushed at least every second;
    a file that cannot be read gets a row with its ``error`` and the run goes on. Rerunning
    into the same ``out`` skips the images the file already holds (a half-written last line is
    dropped first); ``overwrite=True`` starts over. An interruption (Ctrl-C) keeps every row
    written. pictures: draw the first N images' glance and patches (default: all of them for
    runs of at most 16 images, else none). Under torchrun (or with ``rank`` / ``world_size``),
    rank k takes every world_size-th image and writes predictions.rank{k}.jsonl; the last rank
    to finish merges the shards into predictions.jsonl. log: called with each line to print
    (small runs print a line per image). precision, layout: the inference format (gfnet.load).
    Returns a summary of the run.
    """
    from .viz import prediction_picture, prediction_picture_name

    if fmt not in ("jsonl", "csv"):
        raise GFNetError(f"--format must be jsonl or csv, not {fmt!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise GFNetError(f"--batch-size must be a positive integer, not {batch_size!r}")
    if workers is not None and workers < 0:
        raise GFNetError(f"--workers must be 0 or more, not {workers}")
    if pictures is not None and pictures < 0:
        raise GFNetError(f"--pictures must be 0 or more, not {pictures}")
    env_rank, env_world, local_rank = _torchrun_rank()
    rank = env_rank if rank is None else rank
    world_size = env_world if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise GFNetError(f"rank {rank} is not in 0 .. {world_size - 1} (world size {world_size})")
    say = log or (lambda _line: None)
    everything = find_images(inputs, files_from)
    if not everything:
        raise DataError("no images to predict: give image files, folders holding images, or --files-from LIST")
    if device in (None, "auto") and torch.cuda.is_available():
        device = f"cuda:{local_rank % torch.cuda.device_count()}"
    predictor = load(checkpoint, device, class_names=class_names, precision=precision, layout=layout)
    set_threads(predictor.cfg.run.threads)
    rule = predictor.exit_rule(budget, thresholds, target_macs)
    # the exit rule is checked before anything is written
    folder = OutputFolder(out, force=force, command="gfnet predict")
    sharded = world_size > 1
    results = _ResultsFile(folder.path / (f"{PREDICTIONS}.rank{rank}.{fmt}" if sharded else f"{PREDICTIONS}.{fmt}"),
                           fmt)
    results.check()
    candidates = [folder.path / f"{PREDICTIONS}.{fmt}", *sorted(folder.path.glob(f"{PREDICTIONS}.rank*.{fmt}"))]
    others = [_ResultsFile(p, fmt) for p in candidates
              if p != results.path and p.is_file() and not p.is_symlink()]
    if overwrite:
        # each rank removes its own shard; rank 0 (or the only process) the merged file and the
        # shards no rank of this run writes
        results.path.unlink(missing_ok=True)
        if rank == 0:
            for other in others:
                k = other.path.suffixes[0][len(".rank"):] if other.path.suffixes[0].startswith(".rank") else None
                if k is None or not k.isdigit() or int(k) >= world_size:
                    other.path.unlink(missing_ok=True)
        others = []
    (folder.path / f".{PREDICTIONS}.rank{rank}.done").unlink(missing_ok=True)  # a finished mark of a past run
    # a fixed split of every input (not of what is left): ranks agree on it whatever each sees
    mine_all = everything[rank::world_size]
    done = results.done(repair=True)
    for other in others:
        done |= other.done(repair=False)
    todo = [p for p in mine_all if p not in done]
    draw = (len(everything) if len(everything) <= SMALL_RUN else 0) if pictures is None else pictures
    index_of = {p: i for i, p in enumerate(everything)} if draw else {}
    picture_names = {}
    for p in todo:
        i = index_of.get(p, draw)
        if i < draw:
            picture_names[p] = prediction_picture_name(i, p)
            folder.target(picture_names[p])  # refuse before the work, not after it
    say(f"thresholds: {rule.source}")
    if workers is None:
        workers = min(8, max((os.cpu_count() or 1) - 1, 0))
    summary: dict[str, Any] = {"predictions": str(results.path), "thresholds": rule.source, "steps": predictor.steps,
                               "images": len(mine_all), "skipped": len(mine_all) - len(todo), "predicted": 0,
                               "errors": 0, "exit_counts": [0] * predictor.steps}
    verbose = len(everything) <= SMALL_RUN
    # a small run prints a line per image, in input order (the engine finishes them in exit
    # order): held until the run ends, at most SMALL_RUN of them
    lines: dict[str, str] = {}
    stats = StreamStats()
    started = time.monotonic()
    dataset = _DecodeDataset(todo, predictor.channels, predictor.cfg.model, predictor._eval_settings, resize)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                         collate_fn=_WorkerBatch(stack=resize),
                                         prefetch_factor=2 if workers else None)
    errors: list[dict[str, Any]] = []  # rows of unreadable files, written as the engine goes

    def batches() -> Iterator[tuple[list[PreparedImage], torch.Tensor | None]]:
        for entries, stacked, bad in loader:
            errors.extend({"image": todo[i], "error": error} for i, error in bad)
            if entries:
                yield prepared_images(entries, stacked), stacked

    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="img", desc="gfnet predict", dynamic_ncols=True)
    stream = predictor.stream_prepared(batches(), rule, batch_size=batch_size, keep_inputs=bool(picture_names),
                                       stats=stats, resize=resize)
    try:
        for p in stream:
            while errors:
                results.write(errors.pop(0))
                summary["errors"] += 1
                if bar is not None:
                    bar.update(1)
            row = {"image": p.input, "class_index": p.class_index, "class_name": p.class_name,
                   "confidence": p.confidence, "exit_step": p.exit_step, "macs": p.macs,
                   "boxes": [list(b) for b in p.boxes]}
            if p.input in picture_names:
                png = io.BytesIO()
                prediction_picture(png, index_of[p.input], p.input, p.model_input.cpu(),
                                   torch.tensor(p.model_boxes), predictor.cfg.model, exit_step=p.exit_step,
                                   label=f"{p.class_name} ({p.confidence:.2f}), exit at step {p.exit_step}")
                row["picture"] = str(folder.write(picture_names[p.input], png.getbuffer()))
            results.write(row)
            summary["predicted"] += 1
            summary["exit_counts"][p.exit_step - 1] += 1
            if verbose:
                macs = f"MACs: {FVCORE_MISSING}" if p.macs is None else f"{p.macs / 1e6:.2f} M MACs"
                lines[p.input] = (f"{p.input}: {p.class_name} (class {p.class_index}) confidence "
                                  f"{p.confidence:.4f} exit step {p.exit_step}/{predictor.steps} {macs}"
                                  + (f" -> {row['picture']}" if "picture" in row else ""))
            if bar is not None:
                bar.update(1)
                if summary["predicted"] % 64 == 1:
                    bar.set_postfix_str(f"exits {_exit_mix(summary['exit_counts'])}", refresh=False)
        for row in errors:  # the last batches' unreadable files
            results.write(row)
            summary["errors"] += 1
            if bar is not None:
                bar.update(1)
        errors.clear()
    finally:
        stream.close()
        if bar is not None:
            bar.close()
        results.close()
        for path in everything:  # what finished, also when interrupted
            if path in lines:
                say(lines.pop(path))
    seconds = time.monotonic() - started
    summary.update(seconds=seconds, images_per_s=(summary["predicted"] + summary["errors"]) / max(seconds, 1e-9),
                   mean_focus_batch=stats.mean_focus_batch)
    if sharded:
        summary["merged"] = _finish_shard(folder.path, rank, world_size, fmt)
    elif others:  # shards an interrupted torchrun left behind
        summary["predictions"] = str(_merge_shards(folder.path, fmt))
    return summary


def _finish_shard(folder: Path, rank: int, world_size: int, fmt: str) -> str | None:
    """Marks this rank's shard finished; the rank that finds every shard finished merges them
    (an exclusive lock file makes it one rank). Returns the merged file's path, if it merged."""
    marker = folder / f".{PREDICTIONS}.rank{rank}.done"
    marker.write_text(str(world_size))
    if not all((folder / f".{PREDICTIONS}.rank{k}.done").exists() for k in range(world_size)):
        return None
    lock = folder / f".{PREDICTIONS}.merging"
    try:
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return None  # another rank merges
    try:
        merged = _merge_shards(folder, fmt)
        for k in range(world_size):
            (folder / f".{PREDICTIONS}.rank{k}.done").unlink(missing_ok=True)
    finally:
        lock.unlink(missing_ok=True)
    return str(merged)


__all__ = ["find_images", "image_extensions", "predict_files", "predict_folder"]
