"""The kinds of training stage, as objects the Trainer loops over.

A stage says how many epochs it runs, which parts of the model it trains, the module DDP wraps
(its runner), its optimiser and schedule, how one epoch goes, which focus modes validate it, and
where its checkpoint lives. The Trainer (trainer.py) owns what every stage shares: the run
folder, data loaders, evaluation, checkpoints and exact resume, DDP, AMP, progress and metrics.

Each stage has a number, the ``stage`` field of its checkpoint and of its metrics.jsonl rows:

    0  the static baseline (train/baseline.py): the backbone on the full image
    1  warm-up: random focus locations; encoders + classifier learn
       loss = (sum_t CE(classifier_t) + r * sum_t CE(encoder head on step t's features)) / T
    2  policy: encoders + classifier frozen (eval, no grad); PPO on the actor-critic
    3  fine-tune: policy frozen; encoders + classifier learn on the patches at locations sampled
       from it (``optim.stage3_actions``: "sample", as the official code, or "mean")

That is the paper's recipe (``optim.policy_training = "ppo"``). With "differentiable" there is
no stage 2, and stage 3 is the end-to-end stage: the policy learns with the encoders and the
classifier from the classification losses themselves, backpropagated through the bilinear
focus crop into the patch locations (crop_resize's box gradients), beside a rollout at random
locations (``optim.random_focus_loss``):
       loss = (loss of stage 1 at the policy's exact locations + the same at random ones) / 2

With "mixture" stage 2 trains the policy by gradient through a soft choice among candidate
glimpses (:class:`MixturePolicyStage`), then stage 3 fine-tunes as in the paper's recipe.

A new kind of stage is a subclass of :class:`Stage` (or :class:`ClassifierStage` when it trains
a classifier on a loss its runner returns) added to a trainer's ``stage_kinds``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import checkpoint as ckpt
from ..config import Config
from ..errors import ConfigError
from ..models import GFNet, GFState
from ..models.prepack import networks_for_inference
from ..precision import InferenceFormat, check_precision, has_native_bf16
from .distributed import all_reduce_sum
from .ppo import PolicyEvaluator, RolloutMemory, ppo_update, true_class_prob

if TYPE_CHECKING:
    from .trainer import Trainer


def set_trainable(model: GFNet, parts: Iterable[str]) -> None:
    """requires_grad and train/eval mode per part: frozen parts are eval (BN stats fixed)."""
    parts = set(parts)
    modules = {"global_encoder": model.global_encoder, "local_encoder": model.local_encoder,
               "classifier": model.classifier, "policy": model.policy}
    for name, mod in modules.items():
        on = name in parts
        mod.train(on)
        for p in mod.parameters():
            p.requires_grad_(on)


def _at_least_float32(logits: torch.Tensor) -> torch.Tensor:
    """AMP's half-precision logits in float32 for the loss; float64 stays (gradient checks)."""
    return logits if logits.dtype == torch.float64 else logits.float()


def stage_loss(outs, labels: torch.Tensor, head_weight: float) -> torch.Tensor:
    loss = sum(F.cross_entropy(_at_least_float32(o.logits), labels) for o in outs)
    if head_weight:
        loss = loss + head_weight * sum(F.cross_entropy(_at_least_float32(o.head_logits), labels) for o in outs)
    return loss / len(outs)


def cosine(progress: float) -> float:
    """The cosine schedule's factor at ``progress`` (0 .. 1) of a stage."""
    return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


class _RolloutLoss(nn.Module):
    """forward(images, labels) -> (loss, per-step logits): the module DDP wraps in stages 1, 3.

    policy: where the rollout looks ("random", or the policy's "mean" / "sample");
    differentiable: crop at the exact locations, so that the loss reaches the policy (the
    differentiable stage 3); random_rollout: average in the loss of a second rollout at random
    locations from the same glance (its logits are not returned)."""

    def __init__(self, model: GFNet, policy: str, head_weight: float, *, differentiable: bool = False,
                 random_rollout: bool = False):
        super().__init__()
        self.model = model
        self.policy = policy
        self.head_weight = head_weight
        self.differentiable = differentiable
        self.random_rollout = random_rollout

    def forward(self, images: torch.Tensor, labels: torch.Tensor):
        outs = self.model.rollout(images, policy=self.policy, differentiable=self.differentiable)
        loss = stage_loss(outs, labels, self.head_weight)
        if self.random_rollout:
            spread = self.model.rollout(images, policy="random", glance=outs[0])
            loss = (loss + stage_loss(spread, labels, self.head_weight)) / 2
        return loss, [o.logits.detach() for o in outs]


class Stage:
    """One kind of training stage. Subclasses set ``number`` and ``label`` and fill in the
    methods that raise here."""

    number: int
    label: str  # "stage N": the key of its results (results.json) and of the log's lines
    title: str = ""  # what it does, in the training curves and their warnings ("": the label)
    val_modes: tuple[str, ...] = ("mean", "random")  # focus modes of validation, the first judged

    def checkpoint_path(self, out: Path) -> Path:
        return ckpt.stage_path(out, self.number)

    def epochs(self, cfg: Config) -> int:
        return getattr(cfg.optim, f"epochs_stage{self.number}")

    def batch_size(self, cfg: Config) -> int:
        """The training batch (all ranks together)."""
        return cfg.optim.batch_size

    def set_trainable(self, trainer: Trainer) -> None:
        raise NotImplementedError

    def trains_glance(self, trainer: Trainer) -> bool:
        """Whether the stage trains the glance's prediction (step 1): a glance that ends near
        chance is then this stage's failure (train/curves.py warns of it)."""
        return False

    def runner(self, trainer: Trainer) -> nn.Module:
        """The module DDP wraps."""
        raise NotImplementedError

    def make_modules(self, trainer: Trainer) -> nn.Module | None:
        """Modules the stage trains besides the model's (Trainer.stage_modules keeps them and
        saves them in the stage's checkpoint); None: only the model's."""
        return None

    def find_unused_parameters(self, cfg: Config) -> bool:
        return False

    def optimizer(self, trainer: Trainer) -> torch.optim.Optimizer:
        raise NotImplementedError

    def scheduler(self, opt: torch.optim.Optimizer, total_units: int):
        """The learning-rate schedule over ``total_units`` (epochs or steps), or None."""
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda i: cosine(i / total_units))

    def run_epoch(self, trainer: Trainer, runner: nn.Module, opt, sched, scaler, epoch: int,
                  epochs: int) -> dict[str, Any]:
        """One epoch of training; returns its metrics row (loss, lr, images_per_s, ...)."""
        raise NotImplementedError


class ClassifierStage(Stage):
    """A stage whose runner returns (loss, per-output logits) for a batch: SGD with a cosine
    schedule, optional AMP loss scaling and gradient clipping."""

    @staticmethod
    def sgd(cfg: Config, groups: list[dict[str, Any]], lr: float) -> torch.optim.SGD:
        """SGD over ``groups`` with the recipe's momentum, Nesterov switch and weight decay."""
        o = cfg.optim
        return torch.optim.SGD(groups, lr=lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0,
                               weight_decay=o.weight_decay)

    def run_epoch(self, trainer, runner, opt, sched, scaler, epoch, epochs):
        cfg = trainer.cfg
        loader = trainer.train_loader(epoch, self.batch_size(cfg))
        total = trainer.iterations(loader, cfg.run.max_train_batches)
        correct = torch.zeros(trainer.num_outputs(), dtype=torch.float64)
        loss_sum, seen, t0 = 0.0, 0, time.time()
        params = [p for g in opt.param_groups for p in g["params"]]
        bar = trainer.progress(loader, total, f"{self.label} epoch {epoch + 1}/{epochs}")
        for i, (x, y) in enumerate(bar):
            if i >= total:
                break
            x, y = x.to(trainer.device, non_blocking=True), y.to(trainer.device, non_blocking=True)
            with trainer.autocast():
                loss, logits = runner(x, y)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
            else:
                loss.backward()
            if cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            if cfg.optim.schedule_unit == "step" and sched is not None:
                sched.step()
            loss_sum += float(loss.detach()) * y.numel()
            seen += y.numel()
            for t, lg in enumerate(logits):
                correct[t] += float((lg.argmax(1) == y).sum())
            if bar is not loader:
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct[-1] / seen:.3f}")
        stats = torch.tensor([loss_sum, seen, *correct.tolist()], dtype=torch.float64, device=trainer.device)
        all_reduce_sum(stats, trainer.dist)
        n = max(float(stats[1]), 1.0)
        dt = time.time() - t0
        return {"loss": float(stats[0]) / n, "train_acc": [round(float(c) / n, 5) for c in stats[2:]],
                "lr": {g.get("name", str(k)): g["lr"] for k, g in enumerate(opt.param_groups)},
                "images_per_s": float(stats[1]) / max(dt, 1e-9), "train_time_s": round(dt, 2)}


class _GFNetClassifierStage(ClassifierStage):
    """Warm-up and fine-tune: encoders (one may stay frozen) + classifier on a GFNet rollout."""

    freeze_global_key: str  # the optim switch that keeps the global encoder frozen
    classifier_lr_key: str

    def trained_parts(self, cfg: Config) -> tuple[str, ...]:
        frozen_global = getattr(cfg.optim, self.freeze_global_key)
        enc = ("local_encoder",) if frozen_global else ("global_encoder", "local_encoder")
        return enc + ("classifier",)

    def fresh_frozen_heads(self, trainer: Trainer) -> list[nn.Module]:
        """The class heads that started fresh (other classes than ``model.init_from``'s) inside
        a part this stage keeps frozen, e.g. the glance head of a global encoder frozen in a
        fine-tune: they learn with the classifier, or the glance would stay at chance."""
        parts = self.trained_parts(trainer.cfg)
        return [trainer.model.get_submodule(name) for name in trainer.fresh_heads
                if name.split(".", 1)[0] not in parts]

    def trains_glance(self, trainer):
        # the global encoder, or at least its fresh head inside a frozen global encoder
        return ("global_encoder" in self.trained_parts(trainer.cfg)
                or any(name.startswith("global_encoder.") for name in trainer.fresh_heads))

    def set_trainable(self, trainer):
        set_trainable(trainer.model, self.trained_parts(trainer.cfg))
        for head in self.fresh_frozen_heads(trainer):
            head.train(True)
            head.requires_grad_(True)

    def rollout_actions(self, cfg: Config) -> str:
        """Where the rollouts of training look: random locations until a policy exists."""
        return "random"

    def runner(self, trainer):
        return _RolloutLoss(trainer.model, self.rollout_actions(trainer.cfg), trainer.cfg.optim.head_loss_weight)

    def find_unused_parameters(self, cfg):
        return not cfg.optim.head_loss_weight

    def optimizer(self, trainer):
        o = trainer.cfg.optim
        groups = trainer.model.param_groups()
        parts = self.trained_parts(trainer.cfg)
        cls_lr = getattr(o, self.classifier_lr_key)
        pg = []
        enc = [p for name in ("global_encoder", "local_encoder") if name in parts for p in groups[name]]
        if enc:
            pg.append({"params": enc, "lr": o.lr_backbone, "name": "backbone"})
        heads = [p for head in self.fresh_frozen_heads(trainer) for p in head.parameters()]
        pg.append({"params": groups["classifier"] + heads, "lr": cls_lr, "name": "classifier"})
        return self.sgd(trainer.cfg, pg, cls_lr)


class WarmUpStage(_GFNetClassifierStage):
    number, label = 1, "stage 1"
    title = "stage 1 (warm-up)"
    val_modes = ("random",)  # no policy yet
    freeze_global_key, classifier_lr_key = "freeze_global_stage1", "lr_classifier_stage1"


class FineTuneStage(_GFNetClassifierStage):
    number, label = 3, "stage 3"
    title = "stage 3 (fine-tune)"
    freeze_global_key, classifier_lr_key = "freeze_global_stage3", "lr_classifier_stage3"

    def rollout_actions(self, cfg):
        return cfg.optim.stage3_actions


class JointOptimizer(torch.optim.Optimizer):
    """Several optimisers stepped as one, for a stage whose parts learn best with different
    rules (the differentiable stage 3: SGD for the networks, Adam for the policy). Its
    ``param_groups`` are theirs, so a schedule scales every group; one state dict holds theirs."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        params = [p for o in optimizers for g in o.param_groups for p in g["params"]]
        super().__init__(params, {})
        self.optimizers = optimizers
        self.param_groups = [g for o in optimizers for g in o.param_groups]

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("JointOptimizer.step takes no closure")
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = state_dict["optimizers"]
        if len(states) != len(self.optimizers):
            raise ValueError(f"{len(states)} optimiser states for {len(self.optimizers)} optimisers")
        for o, st in zip(self.optimizers, states):
            o.load_state_dict(st)
        # loading gives each optimiser new group dicts: the schedule must scale those
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]


class EndToEndStage(_GFNetClassifierStage):
    """The differentiable recipe's stage 3: the policy learns with the encoders and the
    classifier, by gradient through the crop (no PPO, no value network, no rewards)."""

    number, label = 3, "stage 3"
    title = "stage 3 (end to end)"
    freeze_global_key, classifier_lr_key = "freeze_global_stage3", "lr_classifier_stage3"

    def trained_parts(self, cfg):
        return super().trained_parts(cfg) + ("policy",)

    def runner(self, trainer):
        o = trainer.cfg.optim
        return _RolloutLoss(trainer.model, "mean", o.head_loss_weight, differentiable=True,
                            random_rollout=o.random_focus_loss)

    def find_unused_parameters(self, cfg):
        return True  # the policy's critic (PPO's value network) gets no gradient here

    def optimizer(self, trainer):
        # The policy's gradient comes through a few pixels of image gradient and is small and
        # one-sided early on: SGD at the networks' learning rates hardly moves it, at ten to a
        # hundred times that it drives the actor into the sigmoid's flat ends (a fixed corner).
        # Adam's steps do not depend on the gradient's scale, as in PPO's stage 2.
        policy = torch.optim.Adam([{"params": trainer.model.param_groups()["policy"],
                                    "lr": trainer.cfg.optim.lr_policy, "name": "policy"}])
        return JointOptimizer(super().optimizer(trainer), policy)


class _PolicyOnly:
    """A stage 2 that trains the policy alone, everything else frozen (in eval mode)."""

    def trained_parts(self, cfg: Config) -> tuple[str, ...]:
        return ("policy",)

    def set_trainable(self, trainer):
        set_trainable(trainer.model, self.trained_parts(trainer.cfg))


class PolicyStage(_PolicyOnly, Stage):
    """PPO on the actor-critic; everything else frozen. No schedule: Adam at ``ppo.lr``."""

    number, label = 2, "stage 2"
    title = "stage 2 (policy)"

    def runner(self, trainer):
        return PolicyEvaluator(trainer.model.policy)

    def optimizer(self, trainer):
        return torch.optim.Adam(trainer.model.param_groups()["policy"], lr=trainer.cfg.ppo.lr)

    def scheduler(self, opt, total_units):
        return None

    def run_epoch(self, trainer, runner, opt, sched, scaler, epoch, epochs):
        cfg = trainer.cfg
        model = trainer.model
        loader = trainer.train_loader(epoch, self.batch_size(cfg))
        total = trainer.iterations(loader, cfg.run.max_train_batches)
        T = model.max_steps
        sums = torch.zeros(4, dtype=torch.float64)  # policy loss, value loss, reward, batches
        seen, t0 = 0, time.time()
        memory = RolloutMemory()
        bar = trainer.progress(loader, total, f"{self.label} epoch {epoch + 1}/{epochs}")
        for i, (x, y) in enumerate(bar):
            if i >= total:
                break
            x, y = x.to(trainer.device, non_blocking=True), y.to(trainer.device, non_blocking=True)
            memory.clear()
            with torch.no_grad(), trainer.autocast():
                out = model.glance_step(x)
                p_prev = true_class_prob(out.logits, y)
                state = out.state
                for _ in range(1, T):
                    out = model.focus_step(x, state, policy="sample")
                    p = true_class_prob(out.logits, y)
                    memory.add(out.policy_input, out.action, out.log_prob, p - p_prev)
                    p_prev, state = p, out.state
            if len(memory) == 0:
                break
            st = ppo_update(runner, opt, memory, cfg.ppo)
            sums += torch.tensor([st["policy_loss"], st["value_loss"], st["reward"], 1.0], dtype=torch.float64)
            seen += y.numel()
            if bar is not loader:
                bar.set_postfix(reward=f"{sums[2] / sums[3]:.3f}")
        stats = torch.tensor([*sums.tolist(), seen], dtype=torch.float64, device=trainer.device)
        all_reduce_sum(stats, trainer.dist)
        nb = max(float(stats[3]), 1.0)
        dt = time.time() - t0
        return {"loss": float(stats[0]) / nb, "value_loss": float(stats[1]) / nb,
                "reward": float(stats[2]) / nb, "lr": {"policy": opt.param_groups[0]["lr"]},
                "images_per_s": float(stats[4]) / max(dt, 1e-9), "train_time_s": round(dt, 2)}


def grid_locations(grid: int, device=None) -> torch.Tensor:
    """The G x G candidate locations (G*G, 2) of the mixture stage: actions spread evenly over
    [0, 1]^2, the first coordinate the row (as the policy's actions)."""
    axis = torch.linspace(0.0, 1.0, grid, device=device)
    return torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)


class CandidateScorer(nn.Module):
    """Scores the K candidate locations of one focus step from the state the policy reads there
    (the previous step's feature map): a training-only module of the mixture stage."""

    def __init__(self, fmap_shape: tuple[int, int, int], candidates: int, *, channels: int = 8,
                 hidden: int = 256):
        super().__init__()
        c, h, w = fmap_shape
        self.net = nn.Sequential(nn.Conv2d(c, channels, 1), nn.ReLU(inplace=True), nn.Flatten(),
                                 nn.Linear(channels * h * w, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, candidates))

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.net(fmap)


# the refinement candidates' offsets from the previous location (first: none), in units of
# optim.mixture_refine. A 3 x 3 set did no better on the digits (three seeds, 20000 canvases
# each, before the fine-tune: the last step 98.87 % on average against these 5's 98.88 %) and
# costs 1.4x the stage's time per batch.
_REFINE_OFFSETS = torch.tensor([[0.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])


def candidate_precision(choice: str, device: torch.device | str) -> str:
    """The precision of the mixture stage's candidate encoding (``optim.mixture_precision``):
    "auto" is bf16 where ``device`` multiplies it in hardware (convolutions are 73 % of the
    stage's time on the CPU, most of them the candidates', which ran 1.5x faster in bf16 with
    AVX-512 BF16; the features move by 0.5 %, far less than the candidates differ by), else
    fp32."""
    if choice == "auto":
        return "bf16" if has_native_bf16(device) else "fp32"
    return check_precision(choice, device, "optim.mixture_precision")


class _MixturePolicyLoss(nn.Module):
    """The mixture stage's loss for a batch, and the logits of the policy's rollout.

    At focus step t the local encoder's features of the patches at all K grid locations
    (computed once per batch, without gradient: the encoders and classifier are frozen) are
    mixed with the weights softmax(scorer_t(state)) and classified from the step's classifier
    state. The gradient of that loss wrt the weights compares the candidates by what each one's
    features do to the loss (to first order), so the scorer learns which candidate to look at in
    one backward pass, where the gradient of a crop's position only sees the pixels at its edges.
    From the second focus step on, ``refine`` > 0 adds 5 candidates: the previous step's location
    and ``refine`` up, down, left and right of it (a second look that re-centres on what the first
    found, which the coarse grid cannot offer). The policy's actor is regressed onto the weights'
    expected location (its trunk learns from that too), and the rollout advances at the actor's
    mean, as inference will look.

    ``lookahead`` > 0 chooses each focus step's look with the next one in mind, as PPO's discounted
    return does: every candidate of a step that has a next one is also valued by the next step's
    expected loss after it (next_step_value), and the weights' expected value joins the loss with
    this weight."""

    def __init__(self, model: GFNet, scorers: nn.ModuleList, grid: int, action_weight: float,
                 refine: float = 0.0, chunk: int = 1024, precision: str = "fp32", lookahead: float = 0.0):
        super().__init__()
        self.model = model
        self.lookahead = lookahead
        self.scorers = scorers
        self.grid = grid
        self.action_weight = action_weight
        self.refine = refine
        self.chunk = chunk
        # The stage keeps the local encoder frozen (eval mode, no gradient), so the candidates
        # may run through a copy in the inference format (networks_for_inference: batch norm
        # folded, channels_last, weights packed where the backbone gains from it; 1.3x faster
        # on the digits' 288 candidates a batch on 2 CPU cores, the features moved by rounding
        # only), its weights in ``precision`` (candidate_precision). An encoder that learns is
        # used as it is.
        encoder = model.local_encoder
        self.candidate_dtype = None
        if not encoder.training and not any(p.requires_grad for p in encoder.parameters()):
            fmt = InferenceFormat(precision, channels_last=True, fold_batch_norm=True)
            encoder = networks_for_inference(copy.deepcopy(encoder), fmt)
            if fmt.dtype is not None:
                self.candidate_dtype = fmt.dtype
                encoder.to(fmt.dtype)
        self.candidate_encoder = encoder

    def looks_ahead(self, t: int) -> bool:
        """Whether focus step ``t``'s candidates are also valued by the next step (a next step
        exists and the look-ahead is on)."""
        return self.lookahead > 0 and t + 1 < self.model.max_steps

    def candidate_features(self, images: torch.Tensor, locations: torch.Tensor, feature_maps: bool = False
                           ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The local encoder's features (n, K, D) of the patches at ``locations`` (n, K, 2), and
        if ``feature_maps`` their feature maps (n, K, C, h, w; else None), what the next step's
        scorer reads after each in the look-ahead; cropped and encoded ``chunk`` patches at a time (n * K patches
        at once would hold n * K rows of each of the encoder's activations: a bound for memory
        on any device; on the CPU a backbone with ``cpu_tile_bytes`` also tiles each such call
        for its caches)."""
        n, k = locations.shape[:2]
        rows = torch.arange(n, device=images.device).repeat_interleave(k)
        actions = locations.reshape(-1, 2)
        features, fmaps = [], []
        for i in range(0, n * k, self.chunk):
            feat, fmap = self.candidate_encoder(self.model.focus_input(
                images, actions[i:i + self.chunk], rows[i:i + self.chunk]).to(self.candidate_dtype))
            features.append(_at_least_float32(feat))
            if feature_maps:
                fmaps.append(_at_least_float32(fmap).contiguous())
        fmaps = torch.cat(fmaps).reshape(n, k, *fmaps[0].shape[1:]) if fmaps else None
        return torch.cat(features).reshape(n, k, -1), fmaps

    def near_locations(self, previous: torch.Tensor) -> torch.Tensor:
        """(n, 5, 2): the refinement candidates of each image: its previous focus location, then
        ``refine`` up, down, left and right of it (clamped to the image)."""
        return (previous[:, None, :] + self.refine * _REFINE_OFFSETS.to(previous)).clamp(0.0, 1.0)

    def next_step_value(self, t: int, features: torch.Tensor, fmaps: torch.Tensor, cls: torch.Tensor,
                        grid_features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(n, K): each candidate of focus step ``t`` (its features (n, K, D) and feature maps
        (n, K, C, h, w)) valued by the loss step t + 1 expects after it: the classifier's state
        once the candidate is seen, then the next step's scorer, reading the candidate's feature
        map, weighing the next step's grid candidates and, with ``refine``, a second look at the
        candidate itself (its own features; the refinement patches around it are left out, as
        they would cost encoder passes), each by its loss. Classifier and scorer passes only,
        on features already encoded. The value of the next step's policy as it stands (the
        scorer's weights, not the lowest loss, which with the label at hand nearly every
        candidate reaches): one step of PPO's discounted return, computed for every candidate
        instead of sampled."""
        model = self.model
        n, k, d = features.shape
        g = grid_features.shape[1]
        _, cls_after = model._classify(features.reshape(n * k, d), cls.repeat_interleave(k, 0), t)
        options = grid_features[:, None].expand(n, k, g, d)
        if self.refine > 0:  # the next scorer's candidate g is "the previous location"
            options = torch.cat([options, features[:, :, None]], 2)
        j = options.shape[2]
        with torch.autocast(features.device.type, enabled=False):
            scores = self.scorers[t](fmaps.reshape(n * k, *fmaps.shape[2:])).reshape(n, k, -1)[..., :j]
        next_logits, _ = model._classify(options.reshape(n * k * j, d), cls_after.repeat_interleave(j, 0), t + 1)
        losses = F.cross_entropy(_at_least_float32(next_logits), labels.repeat_interleave(k * j),
                                 reduction="none").reshape(n, k, j)
        return (torch.softmax(scores, 2) * losses).sum(2)

    def forward(self, images: torch.Tensor, labels: torch.Tensor):
        model = self.model
        n = images.shape[0]
        grid = grid_locations(self.grid, images.device).expand(n, -1, -1)
        with torch.no_grad():
            out = model.glance_step(images)
            # the same at every focus step: the encoders are frozen and a candidate's patch
            # depends only on the image and its location
            grid_features, grid_fmaps = self.candidate_features(images, grid, self.looks_ahead(1))
        logits, state, h = [out.logits], out.state, out.state.policy_h
        loss = 0.0
        for t in range(1, model.max_steps):
            locations, features, fmaps = grid, grid_features, grid_fmaps
            if t > 1 and self.refine > 0:
                near = self.near_locations(out.action)
                with torch.no_grad():
                    # the previous location's features and feature map are the previous step's own
                    near_features, near_fmaps = self.candidate_features(images, near[:, 1:], self.looks_ahead(t))
                    near_features = torch.cat([_at_least_float32(out.encoder_head.features)[:, None],
                                               near_features], 1)
                    if self.looks_ahead(t):
                        fmaps = torch.cat([grid_fmaps, _at_least_float32(state.fmap)[:, None], near_fmaps], 1)
                locations = torch.cat([grid, near], 1)
                features = torch.cat([grid_features, near_features], 1)
            fmap = _at_least_float32(state.fmap)
            with torch.autocast(images.device.type, enabled=False):  # the policy: float32
                mean, _, h = model.policy(fmap, h)
                weights = torch.softmax(self.scorers[t - 1](fmap), dim=1)
            mixed = (weights[:, :, None] * features).sum(1)
            mix_logits, _ = model._classify(mixed, state.cls, t)
            target = (weights.detach()[:, :, None] * locations.to(weights.dtype)).sum(1)
            regression = F.mse_loss(mean, target, reduction="none").sum(1).mean()
            loss = loss + F.cross_entropy(_at_least_float32(mix_logits), labels) + self.action_weight * regression
            if self.looks_ahead(t):
                with torch.no_grad():
                    value = self.next_step_value(t, features, fmaps, state.cls, grid_features, labels)
                loss = loss + self.lookahead * (weights * value).sum(1).mean()
            with torch.no_grad():
                out = model.focus_step(images, state, policy="given", action=mean.detach())
            logits.append(out.logits)
            state = GFState(out.state.cls, h, out.state.fmap, out.state.step)
        return loss / (model.max_steps - 1), logits


def candidate_scorers(model: GFNet, grid: int, refine: float) -> nn.ModuleList:
    """The mixture stage's scorers, one per focus step: G * G candidates, and from the second
    focus step on 5 more at and around the previous location if ``refine`` > 0."""
    near = len(_REFINE_OFFSETS) if refine > 0 else 0
    return nn.ModuleList(CandidateScorer(model.fmap_shape, grid * grid + (near if t > 1 else 0))
                         for t in range(1, model.max_steps))


class MixturePolicyStage(_PolicyOnly, ClassifierStage):
    """The mixture recipe's stage 2: the policy learns where to look by gradient through a soft
    choice among candidate glimpses (_MixturePolicyLoss); everything else frozen, as in PPO's
    stage 2. Adam at ``optim.mixture_lr`` for the policy and the candidate scorers, in batches of
    ``optim.mixture_batch_size``."""

    number, label = 2, "stage 2"
    title = "stage 2 (policy, by gradient through candidate glimpses)"

    def epochs(self, cfg):
        return cfg.optim.mixture_epochs

    def batch_size(self, cfg):
        return cfg.optim.mixture_batch_size or super().batch_size(cfg)

    def make_modules(self, trainer):
        return candidate_scorers(trainer.model, trainer.cfg.optim.mixture_grid, trainer.cfg.optim.mixture_refine)

    def runner(self, trainer):
        o = trainer.cfg.optim
        return _MixturePolicyLoss(trainer.model, trainer.stage_modules(self.number), o.mixture_grid,
                                  o.mixture_action_weight, o.mixture_refine,
                                  precision=candidate_precision(o.mixture_precision, trainer.device),
                                  lookahead=o.mixture_lookahead)

    def find_unused_parameters(self, cfg):
        return True  # the policy's critic (PPO's value network) gets no gradient here

    def optimizer(self, trainer):
        params = (trainer.model.param_groups()["policy"]
                  + list(trainer.stage_modules(self.number).parameters()))
        return torch.optim.Adam([{"params": params, "lr": trainer.cfg.optim.mixture_lr, "name": "policy"}])


# GFNet's stages per optim.policy_training: the paper's (PPO), the differentiable recipe and
# the mixture recipe
GFNET_STAGES: tuple[Stage, ...] = (WarmUpStage(), PolicyStage(), FineTuneStage())
RECIPES: dict[str, tuple[Stage, ...]] = {
    "ppo": GFNET_STAGES,
    "differentiable": (WarmUpStage(), EndToEndStage()),
    "mixture": (WarmUpStage(), MixturePolicyStage(), FineTuneStage()),
}


def gfnet_stage_kinds(cfg: Config) -> tuple[Stage, ...]:
    """The stages GFNet trains through with ``cfg``'s ``optim.policy_training``."""
    try:
        return RECIPES[cfg.optim.policy_training]
    except KeyError:
        raise ConfigError(f"optim.policy_training must be one of {', '.join(RECIPES)}, "
                          f"not {cfg.optim.policy_training!r}") from None


def gfnet_stages(cfg: Config) -> list[int]:
    """Their numbers: [1, 2, 3] (PPO, mixture) or [1, 3] (differentiable)."""
    return [kind.number for kind in gfnet_stage_kinds(cfg)]


def trained_parts(cfg: Config, stage: int) -> tuple[str, ...]:
    """Which parts of the model (GFNet.param_groups keys) GFNet's stage ``stage`` trains."""
    for kind in gfnet_stage_kinds(cfg):
        if kind.number == stage:
            return kind.trained_parts(cfg)
    raise ConfigError(f"stage must be one of {', '.join(map(str, gfnet_stages(cfg)))} with "
                      f"optim.policy_training={cfg.optim.policy_training!r}, not {stage!r}")
