"""The dynamic early-exit engine: each step computes only the samples still running.

    result = dynamic_inference(model, images, thresholds)   # thresholds: T-1 floats (or T)

Step 1 glances at every image; every later step runs the policy, crops and encodes only the
active rows (``crop_resize`` with ``batch_index=active``: the images are never copied or
compacted), then early_exit records the rows confident enough to stop and gather_rows compacts
every per-sample state tensor (classifier state, policy hidden, feature map) and the active
index in one pass, both with the model's kernels (``model.kernels``, the backend its crops
use). The last step's threshold is -inf, so every sample gets logits. Steps are numbered from 1
(the glance) to T.

``streaming_inference`` is the same engine over a stream of images: a pool of up to B rows in
flight, refilled after every step with newly glanced images as rows exit, so the focus steps
keep running on (nearly) full batches whatever the exit rate; rows at different steps share one
focus step. Each image's result equals what ``dynamic_inference`` gives it.

``anytime_inference`` runs all T steps on every sample and returns every step's logits: the
reference the dynamic engine must match, and the "official" way to evaluate budgets (all steps,
exits simulated afterwards, see :func:`simulate_exits`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from .exits import confidences, engine_thresholds
from .models.gfnet import GFNet, GFState, StepOutput


@dataclass
class InferenceResult:
    logits: torch.Tensor  # (B, K) logits at each sample's exit step
    exit_step: torch.Tensor  # (B,) int64, 1 .. T
    boxes: torch.Tensor  # (B, T, 4) float (x1, y1, x2, y2) looked at; NaN for steps not taken
    exit_counts: list[int]  # samples exiting at steps 1 .. T (realised, len T)

    @property
    def confidence(self) -> torch.Tensor:
        return torch.softmax(self.logits.float(), dim=1).amax(1)

    @property
    def prediction(self) -> torch.Tensor:
        return self.logits.argmax(1)

    def reached(self) -> list[int]:
        """Samples that computed step k (k = 1 .. T): the number of rows each step ran on."""
        out, left = [], sum(self.exit_counts)
        for c in self.exit_counts:
            out.append(left)
            left -= c
        return out


@dataclass
class AnytimeResult:
    logits: torch.Tensor  # (T, B, K) every step's logits
    boxes: torch.Tensor  # (B, T, 4)


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """The model in eval mode for the block, each module given back its own mode afterwards. A
    model already all in eval mode (a Predictor's) is not written to at all, so threads running
    it at once cannot switch modes under each other."""
    modes = {m: m.training for m in model.modules()}
    if not any(modes.values()):
        yield
        return
    model.eval()
    try:
        yield
    finally:
        for m, t in modes.items():
            m.training = t


@contextmanager
def _running(model: GFNet) -> Iterator[None]:
    """How an engine runs the model: inference mode, eval mode, and the model's inference format
    (its precision's autocast; ``GFNet.set_inference_format``)."""
    with torch.inference_mode(), _eval_mode(model), model.inference_format.autocast(_device_type(model)):
        yield


def _device_type(model: GFNet) -> str:
    return next(model.parameters()).device.type


def engine_kernels(model: GFNet, backend: str | None):
    """The kernels an engine exits and compacts with: the model's own (the policy its crops use,
    resolved once), or those of ``backend`` when one is named."""
    if backend is None:
        return model.kernels
    import gfkernels

    return gfkernels.Kernels(backend)


def host_count(num_keep: torch.Tensor) -> int:
    """early_exit's survivor count read on the host: the one device sync of a step (named, so
    bench/gpu_sync_check.py can count the syncs the engine makes)."""
    return int(num_keep)


def dynamic_inference(model: GFNet, images: torch.Tensor, thresholds=None, *,
                      backend: str | None = None) -> InferenceResult:
    """Early-exit inference of ``images`` (B, C, H, W) (uint8 or float, on the model's device).

    thresholds: per-step confidence thresholds (max softmax probability) for steps 1 .. T-1
    (a T-th value is ignored: the last step lets everyone exit); None = nobody exits early.
    backend: the gfkernels backend of early_exit/gather_rows (None = the model's, ``model.kernels``).
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    T = model.max_steps
    thr = engine_thresholds(thresholds, T)
    B = images.shape[0]
    dev = images.device
    boxes = torch.full((B, T, 4), math.nan, device=dev)
    exit_counts = [0] * T
    kernels = engine_kernels(model, backend)
    with _running(model):
        out = model.glance_step(images)
        K = out.logits.shape[1]
        out_logits = torch.empty(B, K, dtype=out.logits.dtype, device=dev)
        exit_step = torch.zeros(B, dtype=torch.int64, device=dev)
        if B == 0:
            return InferenceResult(out_logits, exit_step, boxes, exit_counts)
        boxes[:, 0] = out.boxes
        active = torch.arange(B, device=dev)
        state = out.state
        for t in range(T):
            if t > 0:
                out = model.focus_step(images, state, batch_index=active, policy="mean")
                boxes[active, t] = out.boxes  # the boxes the step cropped
                state = out.state
            keep, num_keep = kernels.early_exit(out.logits, thr[t], active, out_logits, exit_step,
                                                t + 1)
            n = host_count(num_keep)  # the one host sync of the step
            exit_counts[t] = active.shape[0] - n
            if n == 0:
                break
            if n < active.shape[0]:
                active, *tensors = kernels.gather_rows([active, *state.tensors()], keep, n)
                state = GFState.from_tensors(tensors, state.step)
    return InferenceResult(out_logits, exit_step, boxes, exit_counts)


def host_counts(num_keeps: list[torch.Tensor]) -> list[int]:
    """Several groups' survivor counts read on the host in one transfer: the one device sync of
    a streaming step (named like :func:`host_count`)."""
    if len(num_keeps) == 1:
        return [host_count(num_keeps[0])]
    return torch.stack(num_keeps).tolist()


MAX_GLANCE_FACTOR = 4  # a streaming step glances at most this many times B new images


@dataclass
class StreamedRows:
    """The rows that finished at one step of :func:`streaming_inference` (exit order, not input
    order; every tensor on the model's device)."""

    ids: torch.Tensor  # (n,) int64: each row's place in the input stream, 0 = its first image
    logits: torch.Tensor  # (n, K) at the row's exit step
    exit_step: torch.Tensor  # (n,) int64, 1 .. T
    boxes: torch.Tensor  # (n, T, 4) looked at; NaN for steps not taken
    admitted: torch.Tensor  # (n,) int64: the engine step at which each row was glanced
    finished: int  # the engine step at which these rows exited (counted from 0)

    def __len__(self) -> int:
        return self.ids.shape[0]


@dataclass
class StreamStats:
    """What a :func:`streaming_inference` run did, filled in as it goes (a run starts it afresh:
    an object passed to several runs describes the last one)."""

    engine_steps: int = 0  # steps of the engine (a glance of new rows and/or one shared focus step)
    focus_steps: int = 0  # engine steps that ran a focus step
    exit_counts: list[int] = field(default_factory=list)  # images that exited at steps 1 .. T
    step_rows: list[int] = field(default_factory=list)  # rows that computed steps 1 .. T

    def start(self, steps: int) -> None:
        """Every count back to zero, for a model of ``steps`` steps."""
        self.engine_steps = self.focus_steps = 0
        self.exit_counts, self.step_rows = [0] * steps, [0] * steps

    @property
    def images(self) -> int:
        """Images taken from the input (each is glanced on arrival)."""
        return self.step_rows[0] if self.step_rows else 0

    @property
    def focus_rows(self) -> int:
        """Rows the focus steps ran on, summed."""
        return sum(self.step_rows[1:])

    @property
    def mean_focus_batch(self) -> float:
        """Rows per focus step on average: the pool size when the pool stays full."""
        return self.focus_rows / self.focus_steps if self.focus_steps else 0.0


@dataclass
class _Rows:
    """Rows of the pool that have taken the same number of steps, with their per-row state."""

    state: GFState
    slots: torch.Tensor  # (n,) int64: each row's slot in the pool (its image and output row)
    ids: torch.Tensor  # (n,) int64: its place in the input stream
    boxes: torch.Tensor  # (n, T, 4)
    admitted: torch.Tensor  # (n,) int64: the engine step that glanced it

    def __len__(self) -> int:
        return self.slots.shape[0]

    def row_tensors(self) -> list[torch.Tensor]:
        return [self.slots, self.ids, self.boxes, self.admitted]

    def rows(self, which: slice) -> _Rows:
        """Some of the rows (views: no copy)."""
        st = self.state
        return _Rows(GFState(st.cls[which], st.policy_h[which], st.fmap[which], st.step),
                     *(t[which] for t in self.row_tensors()))

    @staticmethod
    def joined(parts: list[_Rows]) -> _Rows:
        """Groups of rows at the same step as one, in order."""
        if len(parts) == 1:
            return parts[0]
        state = GFState.from_tensors([torch.cat(ts) for ts in zip(*(p.state.tensors() for p in parts))],
                                     parts[0].state.step)
        return _Rows(state, *(torch.cat(ts) for ts in zip(*(p.row_tensors() for p in parts))))


class _Feed:
    """Images from an iterable of batches, ``take(m)`` at a time; holds at most one batch."""

    def __init__(self, batches: Iterable[torch.Tensor], device: torch.device):
        self._batches = iter(batches)
        self._device = device
        self._pending: torch.Tensor | None = None
        self._count = 0
        self._shape: torch.Size | None = None  # (C, H, W) of the first batch
        self.exhausted = False

    def _next_batch(self) -> torch.Tensor | None:
        for batch in self._batches:
            self._count += 1
            if not isinstance(batch, torch.Tensor) or batch.dim() != 4:
                shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
                raise ValueError(f"batches[{self._count - 1}] must be an image batch (B, C, H, W), got "
                                 f"{shape}")
            if self._shape is None:
                self._shape = batch.shape[1:]
            elif batch.shape[1:] != self._shape:
                raise ValueError(f"every image of the stream must be {tuple(self._shape)} (C, H, W) like the "
                                 f"first, got {tuple(batch.shape[1:])} in batches[{self._count - 1}]")
            if batch.shape[0]:
                return batch.to(self._device, non_blocking=True)
        self.exhausted = True
        return None

    def take(self, m: int) -> torch.Tensor | None:
        """Up to ``m`` images (fewer only when the input runs out); None when there are none."""
        parts: list[torch.Tensor] = []
        have = 0
        while have < m:
            if self._pending is None:
                if self.exhausted:
                    break
                self._pending = self._next_batch()
                if self._pending is None:
                    break
            part, rest = self._pending[:m - have], self._pending[m - have:]
            self._pending = rest if rest.shape[0] else None
            parts.append(part)
            have += part.shape[0]
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0]
        if len({p.dtype for p in parts}) > 1:  # uint8 and float batches: all float in [0, 1]
            parts = [p.float() / 255.0 if p.dtype == torch.uint8 else p.float() for p in parts]
        return torch.cat(parts)

    @property
    def done(self) -> bool:
        return self.exhausted and self._pending is None


def streaming_inference(model: GFNet, batches: Iterable[torch.Tensor], thresholds=None, *,
                        pool_size: int = 64, backend: str | None = None,
                        stats: StreamStats | None = None) -> Iterator[StreamedRows]:
    """Early-exit inference over a stream of image batches, yielding rows as they finish.

    batches: any iterable of (b, C, H, W) tensors (b may vary, images of one size and channel
    count throughout; uint8, or float in [0, 1]: a float batch after uint8 ones turns the pool
    to floats, scaling the uint8 images by 1/255). thresholds: as for :func:`dynamic_inference`.
    pool_size: B, the rows in flight the admission aims at. stats: filled in as the run goes (:class:`StreamStats`).

    Every engine step: every row in the pool that has not finished takes its next focus step
    together (the policy, crop and local encoder once on all of them, the classifier per step:
    ``GFNet.focus_step_groups``), and the free slots are filled with new images, glanced on
    arrival; then early_exit decides the exits of each step's rows against that
    step's threshold, their survivor counts are read in one transfer (the one host sync of the
    step), and gather_rows compacts each group's state. A row glanced at engine
    step s exits at engine step s + exit_step - 1: once admitted it never waits, so it finishes
    within T engine steps. New images are admitted so that about B rows stay in flight; when
    the exit rates shift suddenly a focus step may run on more, up to (MAX_GLANCE_FACTOR + 1) B.
    Each row's exit step, logits and boxes are those
    :func:`dynamic_inference` gives the image (up to float rounding of different batch sizes).
    """
    if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
        raise ValueError(f"pool_size must be a positive integer, got {pool_size!r}")
    engine = _StreamingEngine(model, batches, engine_thresholds(thresholds, model.max_steps), pool_size,
                              backend, stats if stats is not None else StreamStats())
    # inference and eval mode only around each step, never across a yield: the caller's code
    # between two results runs in its own modes
    while not engine.done:
        with _running(model):
            rows = engine.step()
        if rows is not None:
            yield rows


class _StreamingEngine:
    """The state of one :func:`streaming_inference` run; :meth:`step` is one engine step."""

    def __init__(self, model: GFNet, batches: Iterable[torch.Tensor], thresholds: list[float], pool_size: int,
                 backend: str | None, stats: StreamStats):
        self.model, self.thr, self.pool_size, self.stats = model, thresholds, pool_size, stats
        self.kernels = engine_kernels(model, backend)
        self.T = model.max_steps
        stats.start(self.T)
        self.dev = next(model.parameters()).device
        self.feed = _Feed(batches, self.dev)
        self.pool: torch.Tensor | None = None  # (slots, C, H, W): the image of each slot
        self.out_logits: torch.Tensor | None = None  # (slots, K): early_exit's output, by slot
        # slots: the rows in flight (B at most when new ones come) and a glance batch (at most
        # MAX_GLANCE_FACTOR * B)
        self.capacity = (MAX_GLANCE_FACTOR + 1) * pool_size
        self.exit_step = torch.zeros(self.capacity, dtype=torch.int64, device=self.dev)  # by slot, like out_logits
        self.free = torch.arange(self.capacity, device=self.dev)  # the free slots, in the order they are reused
        self.running: list[_Rows] = []  # the rows in flight, one group per number of steps taken (1 .. T-1)
        self.next_id = 0
        self.tick = 0
        self.done = False

    def _admit(self, new: torch.Tensor) -> tuple[_Rows, StepOutput]:
        """Puts new images into free slots and glances at them."""
        m = new.shape[0]
        if self.pool is None:
            self.pool = new.new_empty((self.capacity, *new.shape[1:]))
        elif new.shape[1:] != self.pool.shape[1:]:
            raise ValueError(f"every image of the stream must be {tuple(self.pool.shape[1:])} (C, H, W) like "
                             f"the first, got {tuple(new.shape[1:])} at image {self.next_id}")
        if new.dtype != self.pool.dtype:
            new, self.pool = _same_dtype(new, self.pool)
        slots, self.free = self.free[:m], self.free[m:]
        copy_rows(self.pool, slots, new)
        out = self.model.glance_step(new)
        if self.out_logits is None:
            self.out_logits = out.logits.new_empty((self.capacity, out.logits.shape[1]))
        boxes = torch.full((m, self.T, 4), math.nan, device=self.dev)
        boxes[:, 0] = out.boxes
        ids = torch.arange(self.next_id, self.next_id + m, device=self.dev)
        admitted = torch.full((m,), self.tick, dtype=torch.int64, device=self.dev)
        self.next_id += m
        return _Rows(out.state, slots, ids, boxes, admitted), out

    def _admission(self) -> int:
        """How many new images to glance now: enough that, at each step's exit rate seen so far,
        about B rows are left in flight for the next focus step (a glance exiting most images
        calls for a larger glance batch; rows taking their last step all leave). Admitting none
        while B rows are in flight would leave the next focus step with only their survivors:
        the focus batches would swing between B and a fraction of it."""
        B, st = self.pool_size, self.stats

        def survival(t: int) -> float:  # of the rows that compute step t + 1 (0-based t)
            if t == self.T - 1:
                return 0.0
            return 1.0 - st.exit_counts[t] / st.step_rows[t] if st.step_rows[t] else 1.0

        expected_left = sum(len(g) * survival(g.state.step) for g in self.running)
        wanted = math.ceil((B - expected_left) / max(survival(0), 1.0 / MAX_GLANCE_FACTOR))
        return max(0, min(wanted, MAX_GLANCE_FACTOR * B, self.free.shape[0]))

    def step(self) -> StreamedRows | None:
        """One engine step: the focus step of up to B rows in flight and the glance of new ones,
        their exits, the compaction. Returns the rows that finished (None: none did)."""
        wanted = 0 if self.feed.done else self._admission()
        new = self.feed.take(wanted) if wanted else None
        if new is None and not self.running:
            self.done = True
            return None
        # every row in flight takes its next step now: none ever waits, so a row glanced at engine
        # step s exits by engine step s + T - 1. The admission rule keeps the rows in flight near
        # B; when the glance's exit rate drops suddenly a focus batch can hold up to
        # (MAX_GLANCE_FACTOR + 1) * B rows, the pool's capacity, never more.
        chosen = sorted(self.running, key=lambda g: -g.state.step)
        stepped: list[tuple[_Rows, StepOutput]] = []
        if chosen:
            slots = torch.cat([g.slots for g in chosen]) if len(chosen) > 1 else chosen[0].slots
            outs = self.model.focus_step_groups(self.pool, [g.state for g in chosen], batch_index=slots)
            self.stats.focus_steps += 1
            for g, out in zip(chosen, outs):
                g.boxes[:, g.state.step] = out.boxes
                stepped.append((g, out))
        if new is not None:
            stepped.append(self._admit(new))
        decisions = []
        for g, out in stepped:
            t = out.state.step  # the step these rows have just taken, 1 .. T
            decisions.append(self.kernels.early_exit(out.logits, self.thr[t - 1], g.slots, self.out_logits,
                                                     self.exit_step, t))
        kept = host_counts([num_keep for _, num_keep in decisions])  # the one host sync of the step
        by_step: dict[int, list[_Rows]] = {}
        finished = []
        for (g, out), (keep, _), n_keep in zip(stepped, decisions, kept):
            n = len(g)
            self.stats.exit_counts[out.state.step - 1] += n - n_keep
            self.stats.step_rows[out.state.step - 1] += n
            if n_keep == n:
                by_step.setdefault(out.state.step, []).append(_Rows(out.state, *g.row_tensors()))
                continue
            if n_keep:
                tensors = self.kernels.gather_rows([*g.row_tensors(), *out.state.tensors()], keep, n_keep)
                by_step.setdefault(out.state.step, []).append(
                    _Rows(GFState.from_tensors(tensors[4:], out.state.step), *tensors[:4]))
            finished.append(self.kernels.gather_rows(g.row_tensors(), keep[n_keep:], n - n_keep))
        self.running = [_Rows.joined(parts) for parts in by_step.values()]
        self.stats.engine_steps += 1
        tick, self.tick = self.tick, self.tick + 1
        if not finished:
            return None
        slots, ids, boxes, admitted = (torch.cat(col) if len(finished) > 1 else col[0] for col in zip(*finished))
        self.free = torch.cat([self.free, slots])
        return StreamedRows(ids, self.out_logits.index_select(0, slots), self.exit_step.index_select(0, slots),
                            boxes, admitted, tick)


def copy_rows(dest: torch.Tensor, rows: torch.Tensor, src: torch.Tensor) -> None:
    """``dest[rows[i]] = src[i]`` for a contiguous ``dest``; each row is moved as the widest
    integer words its byte count divides into, because index_copy_ moves uint8 images a byte at a
    time (6x slower than as 8-byte words on a CPU: a pool refill was 3 % of a streaming run)."""
    n = src.shape[0]
    if n == 0:
        return
    row_bytes = src[0].numel() * src.element_size()
    word = next((w for w, size in ((torch.int64, 8), (torch.int32, 4), (torch.int16, 2))
                 if row_bytes % size == 0), None)
    if word is None or src.dtype != dest.dtype or not dest.is_contiguous():
        dest.index_copy_(0, rows, src)
        return
    words = dest.view(dest.shape[0], -1).view(word)
    words.index_copy_(0, rows, src.reshape(n, -1).contiguous().view(word))


def _same_dtype(new: torch.Tensor, pool: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A new batch and the pool in one dtype: uint8 ones become float in [0, 1]."""
    if new.dtype == torch.uint8:
        return new.to(pool.dtype) / 255.0, pool
    return new, (pool.to(new.dtype) / 255.0 if pool.dtype == torch.uint8 else pool.to(new.dtype))


def anytime_inference(model: GFNet, images: torch.Tensor, *, policy: str = "mean",
                      generator: torch.Generator | None = None) -> AnytimeResult:
    """All T steps on every sample: every step's logits, (T, B, K), and the boxes looked at.
    policy: "mean" (the learned policy's locations) or "random" (uniform locations drawn from
    ``generator``: what looking anywhere gives, the yardstick of the policy)."""
    T = model.max_steps
    with _running(model):
        outs = model.rollout(images, policy=policy, generator=generator)
        logits = torch.stack([o.logits for o in outs])
        boxes = torch.stack([o.boxes for o in outs], dim=1)
    return AnytimeResult(logits, boxes)


def simulate_exits(step_logits: torch.Tensor, thresholds) -> tuple[torch.Tensor, torch.Tensor]:
    """The official way: exits decided after running every step. (T, B, K) logits ->
    (exit_step (B,) 1 .. T, logits at the exit step (B, K))."""
    T, B = step_logits.shape[:2]
    thr = torch.tensor(engine_thresholds(thresholds, T), dtype=torch.float64)
    conf = confidences(step_logits).double().cpu()
    done = conf >= thr[:, None]  # (T, B); the last row is all True
    first = done.to(torch.int8).argmax(0)  # first True per column
    exit_step = first.to(step_logits.device) + 1
    logits = step_logits[first.to(step_logits.device), torch.arange(B, device=step_logits.device)]
    return exit_step, logits


def exit_counts_of(exit_step: torch.Tensor, steps: int) -> list[int]:
    return torch.bincount(exit_step.cpu() - 1, minlength=steps)[:steps].tolist()


def run_dataset(model: GFNet, loader, thresholds=None, *, device: torch.device | str = "cpu",
                max_batches: int = 0) -> dict:
    """Dynamic inference over a loader of (images, labels): correct count, exit counts."""
    T = model.max_steps
    correct, total, counts = 0, 0, [0] * T
    for i, (x, y) in enumerate(loader):
        if max_batches and i >= max_batches:
            break
        r = dynamic_inference(model, x.to(device), thresholds)
        correct += int((r.prediction.cpu() == y).sum())
        total += y.numel()
        counts = [a + b for a, b in zip(counts, r.exit_counts)]
    return {"correct": correct, "total": total, "exit_counts": counts}


def collect_anytime(model: GFNet, loader, *, device: torch.device | str = "cpu", max_batches: int = 0,
                    policy: str = "mean", generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All steps over a loader of (images, labels), focus locations as in
    :func:`anytime_inference`: ((T, N, K) logits, labels (N,), (N, T, 4) boxes looked at), on the CPU."""
    logits, labels, boxes = [], [], []
    for i, (x, y) in enumerate(loader):
        if max_batches and i >= max_batches:
            break
        r = anytime_inference(model, x.to(device), policy=policy, generator=generator)
        logits.append(r.logits.float().cpu())
        boxes.append(r.boxes.cpu())
        labels.append(y)
    if not logits:
        raise ValueError("no data to evaluate")
    return torch.cat(logits, dim=1), torch.cat(labels), torch.cat(boxes)


def per_step_accuracy(step_logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    return [float((lg.argmax(1) == labels).double().mean()) for lg in step_logits]


__all__ = [
    "AnytimeResult",
    "InferenceResult",
    "StreamStats",
    "StreamedRows",
    "anytime_inference",
    "collect_anytime",
    "dynamic_inference",
    "exit_counts_of",
    "per_step_accuracy",
    "run_dataset",
    "simulate_exits",
    "streaming_inference",
]
