"""A trained GFNet as a classifier you call on the images you have.

    import gfnet

    predictor = gfnet.load("runs/demo")            # a run folder or a checkpoint file
    result = predictor(["cat.jpg", "dog.png"], budget=5)
    print(result[0].class_name, result[0].confidence, result[0].exit_step)

``load`` gives a :class:`Predictor`: the model in eval mode on its device, the exit thresholds a
``gfnet eval`` calibrated and stored in the checkpoint, and the class names of its data.
Calling it runs the dynamic early-exit engine (``gfnet.inference.dynamic_inference``) under
``torch.inference_mode``, ``batch_size`` images at a time, and returns :class:`Predictions`: a
:class:`Prediction` per image, in input order, and the exit counts of the whole call.

Images: file paths (``str`` / ``Path``, any format PIL reads), PIL images, numpy arrays
((H, W) grayscale or (H, W, C) with C = 1 or 3, or a (N, H, W, C) batch), torch tensors
((H, W), (C, H, W) or a (N, C, H, W) batch) -- uint8, or floating point with values in [0, 1] --
on any device, one image or a list mixing kinds and sizes. Each becomes the model's input
as the model was evaluated (``gfnet.data.preprocess``: channels converted grayscale <-> RGB as
the model takes them, scaled keeping the aspect ratio (stretched instead with
``data.keep_aspect=false``) to cover ``model.image_size / model.eval_crop_fraction``,
centre-cropped to ``model.image_size``; a data set that fixes its own evaluation resize, such
as CIFAR's whole images, is followed: ``data.eval_settings``). With ``resize=False`` the images
run at their own size instead (each side at least the patch size; images of one size are
batched together): GFNet's glance is the whole image at P x P whatever its size, and the focus
locations map into the actual image.

Boxes: ``Prediction.boxes`` are the regions looked at, one per step taken, as (x1, y1, x2, y2)
in the pixels of the image as given (step 1, the glance, is the whole region the model saw:
the whole image, or its centre crop). ``Prediction.model_boxes`` are the same boxes on the
model's input (after the resize and crop); they are whole pixels.

MACs: a prediction's ``macs`` is the multiply-adds of the steps it ran (per-step counts by
fvcore, ``gfnet.flops``, counted once per predictor on a copy of the model, so counting never
touches the model the predictor runs); they do not depend on the image size, since the glance
and every patch are P x P. Without fvcore the predictor runs as well, with ``macs``,
``step_macs`` and ``avg_macs`` None (MACs are only reported, never used to decide).

Threads: one predictor may be called from several threads at once, and every call gives the
answer a call alone would. A call never changes the model: it stays in eval mode (nothing sets
a mode, so BatchNorm statistics are never updated), inference runs under
``torch.inference_mode`` on tensors of its own, and the one piece of shared state a call
builds, the MAC counts, is counted once under a lock. The predictor does not serialise the
calls: they run in parallel as far as torch's own threads allow. :meth:`Predictor.stream`
keeps the same promise: each stream holds its own engine state, and inference mode is entered
around each engine step only, never across a yield, so the caller's code between two results
runs in its own modes. (Moving it with :meth:`to` while another thread calls it is not
supported.)
"""

from __future__ import annotations

import copy
import itertools
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_checkpoint_model, resolve_checkpoint
from .config import Config, image_hw, size_text
from .data.class_names import class_names_from
from .data.inputs import PreparedImage, chunks, flatten_images, prepare_image, stack_images, stream_items
from .data.datasets import class_names as data_class_names, eval_settings
from .device import pick_device
from .errors import GFNetError
from .exits import Calibration, ExitRule, exit_rule, stored_calibration
from .precision import InferenceFormat, check_precision, precision_note
from .inference import StreamStats, dynamic_inference, streaming_inference
from .models.gfnet import GFNet

DEFAULT_BATCH_SIZE = 64

Box = tuple[float, float, float, float]


# ---------------------------------------------------------------------- results
@dataclass
class Prediction:
    """One image's result."""

    input: str  # which image: its path, or its place in the call ("images[3]", "image")
    class_index: int
    class_name: str  # the data's name of the class ("7", "tabby cat"), else str(class_index)
    confidence: float  # max softmax probability at the exit step
    exit_step: int  # 1 (the glance) .. T
    boxes: list[Box]  # (x1, y1, x2, y2) per step taken, in the given image's pixels
    model_boxes: list[Box]  # the same, in the pixels of the model's input
    macs: float | None  # multiply-adds spent on this image (steps 1 .. exit_step); None without fvcore
    logits: torch.Tensor  # (K,) at the exit step, float32 on the CPU
    image_size: tuple[int, int]  # (H, W) of the image as given
    model_size: tuple[int, int]  # (H, W) the model ran at
    model_input: torch.Tensor | None = field(default=None, repr=False)  # (C, H, W), if kept


@dataclass
class Predictions(Sequence[Prediction]):
    """The results of one call: a :class:`Prediction` per image, in input order."""

    predictions: list[Prediction]
    exit_counts: list[int]  # images that exited at steps 1 .. T
    exit_rule: ExitRule
    step_macs: list[float] | None  # MACs of steps 1 .. T; None without fvcore

    def __len__(self) -> int:
        return len(self.predictions)

    def __getitem__(self, i):  # type: ignore[override]
        return self.predictions[i]

    def __iter__(self) -> Iterator[Prediction]:
        return iter(self.predictions)

    @property
    def class_indices(self) -> list[int]:
        return [p.class_index for p in self.predictions]

    @property
    def class_names(self) -> list[str]:
        return [p.class_name for p in self.predictions]

    @property
    def exit_steps(self) -> list[int]:
        return [p.exit_step for p in self.predictions]

    @property
    def logits(self) -> torch.Tensor:
        """(N, K) logits at each image's exit step."""
        return torch.stack([p.logits for p in self.predictions])

    @property
    def avg_macs(self) -> float | None:
        """Average multiply-adds per image of this call (None without fvcore)."""
        if self.step_macs is None:
            return None
        return sum(p.macs for p in self.predictions) / max(len(self.predictions), 1)


# ---------------------------------------------------------------------- the predictor
class Predictor:
    """A GFNet ready for inference: ``predictor(images, budget=k)`` (or ``threshold=``, or
    ``target_macs=``). Build one with :func:`gfnet.load`, or from a model and its config."""

    def __init__(self, model: GFNet, cfg: Config, *, calibration: Calibration | None = None,
                 class_names: Sequence[str] | str | Path | None = None, source: str = "the model",
                 inference_format: InferenceFormat | None = None):
        self.model = model.eval()
        device = next(model.parameters()).device
        fmt = inference_format or InferenceFormat.choose(device=device)
        note = precision_note(fmt.precision, device)
        if note:
            warnings.warn(note, stacklevel=2)
        model.set_inference_format(fmt)
        self.cfg = cfg
        self._eval_settings = eval_settings(cfg)  # the evaluation resize: looked up once, not per image
        self._cumulative_macs: list[float] | None = None  # of steps 1 .. t for each t, counted with _step_macs
        self.calibration = calibration
        self.source = source
        self.class_names = None if class_names is None else class_names_from(class_names, cfg.model.num_classes)
        self._step_macs: list[float] | None = None
        self._macs_counted = False  # _step_macs stays None after counting when fvcore is missing
        self._macs_lock = threading.Lock()  # the first calls from several threads count once

    # -------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def steps(self) -> int:
        return self.model.max_steps

    @property
    def channels(self) -> int:
        return self.cfg.model.in_channels

    @property
    def patch_size(self) -> int:
        return self.cfg.model.patch_size

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the model's input after the evaluation preprocessing."""
        return image_hw(self.cfg.model.image_size)

    @property
    def step_macs(self) -> list[float] | None:
        """Multiply-adds of steps 1 .. T (fvcore, counted on the first use); None without fvcore."""
        return self._counted_macs()[0]

    def _counted_macs(self) -> tuple[list[float] | None, list[float] | None]:
        """(multiply-adds of steps 1 .. T, of steps 1 .. t for each t), counted on the first use;
        (None, None) when fvcore is not installed. fvcore traces the modules it is given; it gets
        a copy, so calls running the model in other threads meanwhile never see a module traced,
        wrapped or switched to training."""
        with self._macs_lock:
            if not self._macs_counted:
                from .flops import count_step_flops, fvcore_available

                if fvcore_available():
                    sf = count_step_flops(copy.deepcopy(self.model), static=False, cross_check=False)
                    self._cumulative_macs = [float(m) for m in sf.cumulative_macs]
                    self._step_macs = [float(m) for m in sf.macs]
                self._macs_counted = True
            return self._step_macs, self._cumulative_macs

    @property
    def inference_format(self) -> InferenceFormat:
        """The precision and layout the networks run in (gfnet.precision)."""
        return self.model.inference_format

    def to(self, device: torch.device | str) -> Predictor:
        fmt = self.model.inference_format
        check_precision(fmt.precision, device)
        self.model.to(device)
        self.model.set_inference_format(fmt)
        return self

    def class_name(self, index: int) -> str:
        names = self.class_names
        return names[index] if names is not None and 0 <= index < len(names) else str(index)

    def __repr__(self) -> str:
        m = self.cfg.model
        budgets = "none" if self.calibration is None else f"{len(self.calibration.points)} calibrated"
        return (f"Predictor({self.source!r}: {m.backbone}, {m.num_classes} classes, image "
                f"{size_text(m.image_size)}, patch {m.patch_size}, {m.max_steps} steps, budgets {budgets}, "
                f"device {self.device}, {self.inference_format.describe()})")

    # -------------------------------------------------------------- exits
    def exit_rule(self, budget: int | None = None, threshold: float | Sequence[float] | torch.Tensor | None = None,
                  target_macs: float | None = None) -> ExitRule:
        """The thresholds of a calibrated ``budget`` (1 .. 39), of an explicit ``threshold`` (one
        value for every step, or one per step), or of the calibrated budget whose average MACs
        on the calibration data is the largest not above ``target_macs``. None of them: budget
        20 when the checkpoint is calibrated, else every image runs all steps (gfnet.exits)."""
        return exit_rule(self.calibration, self.steps, budget=budget, threshold=threshold,
                         target_macs=target_macs, source=self.source)

    # -------------------------------------------------------------- images
    def preprocess(self, images: Any, *, resize: bool = True) -> list[PreparedImage]:
        """The model's input for each image (see the module docstring), with its geometry."""
        return [self._prepare(name, item, resize) for name, item in flatten_images(images)]

    def _prepare(self, name: str, item: Any, resize: bool) -> PreparedImage:
        return prepare_image(name, item, self.channels, self.cfg.model, self._eval_settings, resize)

    # -------------------------------------------------------------- prediction
    def __call__(self, images: Any, *, budget: int | None = None,
                 threshold: float | Sequence[float] | torch.Tensor | None = None,
                 target_macs: float | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                 resize: bool = True, keep_inputs: bool = False) -> Predictions:
        """Classify ``images`` with early exits.

        budget / threshold / target_macs: when images stop (:meth:`exit_rule`). batch_size:
        images per engine call. resize: bring every image to ``model.image_size`` as the model
        was evaluated (True), or run each at its own size (False). keep_inputs: keep each
        image's model input in ``Prediction.model_input``.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise GFNetError(f"batch_size must be a positive integer, not {batch_size!r}")
        rule = self.exit_rule(budget, threshold, target_macs)
        items = flatten_images(images)
        cumulative = self._counted_macs()[1]  # counted outside inference mode (fvcore traces)
        exit_counts = [0] * self.steps
        out: list[Prediction] = []
        for start in range(0, len(items), batch_size):
            chunk, counts = self._predict_chunk(items[start:start + batch_size], rule, cumulative, resize,
                                                keep_inputs)
            out.extend(chunk)
            exit_counts = [a + b for a, b in zip(exit_counts, counts)]
        step_macs = self.step_macs
        return Predictions(out, exit_counts, rule, None if step_macs is None else list(step_macs))

    def _predict_chunk(self, items: list[tuple[str, Any]], rule: ExitRule, cumulative: list[float] | None,
                       resize: bool, keep_inputs: bool) -> tuple[list[Prediction], list[int]]:
        """One batch of (name, image) pairs through the per-batch engine, images of one size
        together: their predictions in input order, and the exit counts."""
        exit_counts = [0] * self.steps
        with torch.inference_mode():
            prepared = [self._prepare(name, item, resize) for name, item in items]
            by_size: dict[tuple[int, int], list[int]] = {}
            for i, p in enumerate(prepared):
                by_size.setdefault(p.geometry.output_hw, []).append(i)
            results: list[Prediction | None] = [None] * len(prepared)
            for rows in by_size.values():
                batch = stack_images([prepared[i].image for i in rows], self.device)
                r = dynamic_inference(self.model, batch, rule)
                exit_counts = [a + b for a, b in zip(exit_counts, r.exit_counts)]
                for i, pred in zip(rows, self._records(r, [prepared[i] for i in rows], cumulative, keep_inputs)):
                    results[i] = pred
        return results, exit_counts  # type: ignore[return-value]

    def stream(self, images: Iterable[Any], *, budget: int | None = None,
               threshold: float | Sequence[float] | torch.Tensor | None = None,
               target_macs: float | None = None, batch_size: int = DEFAULT_BATCH_SIZE, resize: bool = True,
               keep_inputs: bool = False, stats: StreamStats | None = None) -> Iterator[Prediction]:
        """Classify an iterable of images of any length, yielding each :class:`Prediction` as it
        finishes (in exit order, not input order: ``Prediction.input`` names the image).

        Each item is one image of any kind the call takes (or an array batch of them); a path
        is named by itself, anything else by its place in the stream ("images[7]"). Images
        are read and prepared ``batch_size`` at a time as the engine asks for them, and run
        through the streaming engine (``gfnet.inference.streaming_inference``) with a pool of
        ``batch_size`` rows in flight: memory stays bounded whatever the number of images, and
        each image's prediction is the one ``predictor([image])`` gives. With ``resize=False``
        (images of many sizes) each batch of ``batch_size`` goes through the per-batch engine
        instead, its predictions yielded in input order. stats: a
        ``gfnet.inference.StreamStats`` filled in as the stream runs (exit counts, rows per
        focus step). The same thread-safety holds as for a call: each stream has its own state.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise GFNetError(f"batch_size must be a positive integer, not {batch_size!r}")
        rule = self.exit_rule(budget, threshold, target_macs)

        def batches() -> Iterator[tuple[list[PreparedImage], torch.Tensor | None]]:
            for chunk in chunks(stream_items(images), batch_size):
                with torch.inference_mode():
                    prepared = [self._prepare(name, item, resize) for name, item in chunk]
                yield prepared, stack_images([p.image for p in prepared], self.device) if resize else None

        return self.stream_prepared(batches(), rule, batch_size=batch_size, resize=resize, keep_inputs=keep_inputs,
                                    stats=stats)

    def stream_prepared(self, batches: Iterable[tuple[Sequence[PreparedImage], torch.Tensor | None]],
                        rule: ExitRule, *, batch_size: int = DEFAULT_BATCH_SIZE, resize: bool = True,
                        keep_inputs: bool = False, stats: StreamStats | None = None) -> Iterator[Prediction]:
        """:meth:`stream` on images already prepared: batches of (prepared images, their images
        stacked) as ``gfnet predict``'s DataLoader workers give them (the stack None with
        ``resize=False``, where each batch goes through the per-batch engine). The generator
        holds the images in flight only: at most ``batch_size`` rows and one batch."""
        cumulative = self._counted_macs()[1]  # counted outside inference mode (fvcore traces)
        if not resize:
            for prepared, _ in batches:
                items = [(p.input, p.image) for p in prepared]
                yield from self._predict_chunk(items, rule, cumulative, False, keep_inputs)[0]
            return
        in_flight: dict[int, PreparedImage] = {}  # by place in the stream: the images the engine holds
        position = itertools.count()  # the engine numbers the images in the order they are given

        def images() -> Iterator[torch.Tensor]:
            for prepared, stacked in batches:
                for p in prepared:
                    in_flight[next(position)] = p
                yield stacked

        for rows in streaming_inference(self.model, images(), rule, pool_size=batch_size, stats=stats):
            prepared = [in_flight.pop(i) for i in rows.ids.tolist()]
            yield from self._records(rows, prepared, cumulative, keep_inputs)

    def _records(self, r, prepared: list[PreparedImage], cumulative: list[float] | None,
                 keep_inputs: bool) -> list[Prediction]:
        logits = r.logits.float().cpu()
        conf = torch.softmax(logits, dim=1).amax(1).tolist()
        classes = logits.argmax(1).tolist()
        exit_steps = r.exit_step.cpu().tolist()
        boxes = r.boxes.cpu()
        box_lists = boxes.tolist()  # one conversion for the batch, not one per image
        out = []
        for j, p in enumerate(prepared):
            e = exit_steps[j]
            model_boxes = [tuple(b) for b in box_lists[j][:e]]
            # an image taken as it is (no resize, no crop) has its boxes in the model's pixels
            given = (list(model_boxes) if p.geometry.identity
                     else [tuple(b) for b in p.geometry.to_input(boxes[j, :e]).tolist()])
            out.append(Prediction(
                input=p.input, class_index=classes[j], class_name=self.class_name(classes[j]),
                confidence=conf[j], exit_step=e, boxes=given,
                model_boxes=model_boxes, macs=None if cumulative is None else cumulative[e - 1],
                logits=logits[j], image_size=p.geometry.input_hw, model_size=p.geometry.output_hw,
                model_input=p.image if keep_inputs else None))
        return out


# ---------------------------------------------------------------------- loading
def load(source: str | Path, device: torch.device | str | None = None, *,
         class_names: Sequence[str] | str | Path | None = None, precision: str = "fp32",
         layout: str = "auto") -> Predictor:
    """A :class:`Predictor` from a run folder (its latest stage), a gfnet checkpoint file, or an
    imported official checkpoint (``gfnet import-official`` writes one).

    device: "auto" or None (a GPU if there is one, else the CPU), "cpu", "cuda", "cuda:N" or a
    torch.device. class_names: a names file (one per line, or JSON) or a list, overriding the
    checkpoint's names; without either, the names of the data set when it fixes them, else
    the class indices as text. precision: "fp32", "bf16" (a CPU with native bf16, or a GPU) or
    "fp16" (a GPU); the budgets are those calibrated in that precision (``gfnet eval
    --precision``), else the fp32 ones with a warning. layout: "auto" (gfnet.precision),
    "channels_last" or "contiguous".
    """
    ck_path = resolve_checkpoint(source)
    dev = pick_device(None if device is None else str(device))
    # a bad option fails before the loading; the model is the predictor's own: batch norm folded
    fmt = InferenceFormat.choose(precision, dev, layout, fold_batch_norm=True)
    model, cfg, ck = load_checkpoint_model(ck_path, dev)
    if class_names is None:
        stored = ck.get("class_names")
        if isinstance(stored, (list, tuple)) and len(stored) == cfg.model.num_classes:
            class_names = list(stored)
        else:
            fixed = data_class_names(cfg)  # the data set's own names, without reading its data
            if fixed is not None and len(fixed) == cfg.model.num_classes:
                class_names = fixed
    calibration = stored_calibration(ck, precision)
    if calibration is None and precision != "fp32":
        calibration = stored_calibration(ck)
        if calibration is not None:
            warnings.warn(f"{ck_path}: its exit thresholds were calibrated in fp32, not {precision}; budgets "
                          f"choose slightly other exits in {precision} (gfnet eval --precision {precision} "
                          "calibrates them for it)", stacklevel=2)
    return Predictor(model, cfg, calibration=calibration, class_names=class_names, source=str(ck_path),
                     inference_format=fmt)


__all__ = ["DEFAULT_BATCH_SIZE", "Prediction", "Predictions", "PreparedImage",
           "Predictor", "load"]
