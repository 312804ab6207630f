"""The dynamic early-exit engine: each step computes only the samples still running.

    result = dynamic_inference(model, images, thresholds)   # thresholds: T-1 floats (or T)

Step 1 glances at every image; every later step runs the policy, crops and encodes only the
active rows (``crop_resize`` with ``batch_index=active``: the images are never copied or
compacted), then ``gfkernels.early_exit`` records the rows confident enough to stop and
``gfkernels.gather_rows`` compacts every per-sample state tensor (classifier state, policy
hidden, feature map) and the active index in one pass. The last step's threshold is -inf, so
every sample gets logits. Steps are numbered from 1 (the glance) to T.

``anytime_inference`` runs all T steps on every sample and returns every step's logits: the
reference the dynamic engine must match, and the "official" way to evaluate budgets (all steps,
exits simulated afterwards, see :func:`simulate_exits`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .models.gfnet import GFNet, GFState
from .models.patches import whole_image_boxes


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


def normalise_thresholds(thresholds, steps: int) -> list[float]:
    """T thresholds (floats) from T-1 or T values (tensor, list or None = nobody exits early);
    the last one is always -inf."""
    if thresholds is None:
        vals: list[float] = [math.inf] * (steps - 1)
    else:
        if isinstance(thresholds, torch.Tensor):
            thresholds = thresholds.detach().cpu().double().flatten().tolist()
        vals = [float(v) for v in thresholds]
        if len(vals) == steps:
            vals = vals[:-1]
        if len(vals) != steps - 1:
            raise ValueError(f"need {steps - 1} (or {steps}) exit thresholds for {steps} steps, "
                             f"got {len(vals)}")
        if any(math.isnan(v) for v in vals):
            raise ValueError("exit thresholds must not be NaN")
    return vals + [-math.inf]


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


def _glance_box(images: torch.Tensor) -> torch.Tensor:
    """(4,) the whole image (0, 0, W, H), on the images' device without a host copy."""
    return whole_image_boxes(images, 1)[0]


def host_count(num_keep: torch.Tensor) -> int:
    """early_exit's survivor count read on the host: the one device sync of a step (named, so
    bench/gpu_sync_check.py can count the syncs the engine makes)."""
    return int(num_keep)


def dynamic_inference(model: GFNet, images: torch.Tensor, thresholds=None, *,
                      backend: str | None = None) -> InferenceResult:
    """Early-exit inference of ``images`` (B, C, H, W) (uint8 or float, on the model's device).

    thresholds: per-step confidence thresholds (max softmax probability) for steps 1 .. T-1
    (a T-th value is ignored: the last step lets everyone exit); None = nobody exits early.
    backend: the gfkernels backend of early_exit/gather_rows (None = its default).
    """
    import gfkernels

    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    T = model.max_steps
    thr = normalise_thresholds(thresholds, T)
    B = images.shape[0]
    dev = images.device
    boxes = torch.full((B, T, 4), math.nan, device=dev)
    exit_counts = [0] * T
    with torch.inference_mode(), _eval_mode(model):
        out = model.glance_step(images)
        K = out.logits.shape[1]
        out_logits = torch.empty(B, K, dtype=out.logits.dtype, device=dev)
        exit_step = torch.zeros(B, dtype=torch.int64, device=dev)
        if B == 0:
            return InferenceResult(out_logits, exit_step, boxes, exit_counts)
        boxes[:, 0] = _glance_box(images)
        active = torch.arange(B, device=dev)
        state = out.state
        for t in range(T):
            if t > 0:
                out = model.focus_step(images, state, batch_index=active, policy="mean")
                boxes[active, t] = out.boxes  # the boxes the step cropped
                state = out.state
            keep, num_keep = gfkernels.early_exit(out.logits, thr[t], active, out_logits,
                                                  exit_step, t + 1, backend=backend)
            n = host_count(num_keep)  # the one host sync of the step
            exit_counts[t] = active.shape[0] - n
            if n == 0:
                break
            if n < active.shape[0]:
                active, *tensors = gfkernels.gather_rows([active, *state.tensors()], keep, n,
                                                          backend=backend)
                state = GFState.from_tensors(tensors, state.step)
    return InferenceResult(out_logits, exit_step, boxes, exit_counts)


def anytime_inference(model: GFNet, images: torch.Tensor, *, policy: str = "mean",
                      generator: torch.Generator | None = None) -> AnytimeResult:
    """All T steps on every sample: every step's logits, (T, B, K), and the boxes looked at.
    policy: "mean" (the learned policy's locations) or "random" (uniform locations drawn from
    ``generator``: what looking anywhere gives, the yardstick of the policy)."""
    T = model.max_steps
    with torch.inference_mode(), _eval_mode(model):
        outs = model.rollout(images, policy=policy, generator=generator)
        logits = torch.stack([o.logits for o in outs])
        boxes = torch.empty(images.shape[0], T, 4, device=images.device)
        boxes[:, 0] = _glance_box(images)
        for t in range(1, T):
            boxes[:, t] = outs[t].boxes
    return AnytimeResult(logits, boxes)


def confidences(step_logits: torch.Tensor) -> torch.Tensor:
    """(T, B, K) logits -> (T, B) max softmax probability, in float32 like early_exit."""
    return torch.softmax(step_logits.float(), dim=-1).amax(-1)


def simulate_exits(step_logits: torch.Tensor, thresholds) -> tuple[torch.Tensor, torch.Tensor]:
    """The official way: exits decided after running every step. (T, B, K) logits ->
    (exit_step (B,) 1 .. T, logits at the exit step (B, K))."""
    T, B = step_logits.shape[:2]
    thr = torch.tensor(normalise_thresholds(thresholds, T), dtype=torch.float64)
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
    "anytime_inference",
    "collect_anytime",
    "confidences",
    "dynamic_inference",
    "exit_counts_of",
    "normalise_thresholds",
    "per_step_accuracy",
    "run_dataset",
    "simulate_exits",
]
