"""The trainer every stage runs through: data-parallel, with atomic checkpoints and exact resume.

GFNet trains in three stages (warm-up, PPO policy, fine-tune; train/stages.py says what each
does) and the static baseline in one more (train/baseline.py). The Trainer loops over the
stages asked for: it owns the run folder, data loaders, evaluation, checkpoints and resume, DDP,
AMP, progress bars and metrics; each stage object brings its epochs, trained parts, runner,
optimiser, schedule and epoch loop.

Files under the output folder: ``stage{k}.pt`` (latest checkpoint of stage k, rewritten
atomically after every epoch; ``done`` once the stage is complete), ``metrics.jsonl`` (one
JSON object per epoch), ``results.json`` (test accuracy per step after each stage).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from .. import checkpoint as ckpt
from ..config import Config
from ..data import build_datasets, class_names
from ..device import set_threads
from ..errors import CheckpointError, ConfigError, DataError
from ..files import write_atomic
from ..models import build_model
from ..run_config import check_run_config, save_run_config
from .callbacks import TrainerCallback
from .curves import curve_warnings, primary_val, read_metrics, stage_curves
from .distributed import (DistInfo, all_gather_object, all_reduce_sum, average_buffers, barrier, setup,
                          teardown)
from .stages import Stage, gfnet_stage_kinds

__all__ = ["Trainer", "discard_unsaved_progress", "train"]


class Trainer:
    checkpoint_kind = "gfnet"  # the "kind" field of every checkpoint written

    def __init__(self, cfg: Config, out_dir: str | Path, *, resume: bool = False,
                 dist_info: DistInfo | None = None, callbacks: Sequence[TrainerCallback] = (),
                 force: bool = False):
        cfg.validate()
        self.cfg = cfg
        self.stage_kinds = self.stage_kinds_for(cfg)  # the stages this trainer runs, by number
        self.out = Path(out_dir)
        self.resume = resume
        self.force = force  # train on although the config differs from the run's config.yaml
        self.callbacks = list(callbacks)
        set_threads(cfg.run.threads)
        if cfg.run.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=False)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        self.dist = dist_info or setup(cfg.run.device)
        self.device = self.dist.device
        self.datasets = build_datasets(cfg)  # data errors surface before anything is written
        self.class_names = class_names(cfg, self.datasets)  # stored in every checkpoint (or None)
        if self.class_names is not None and len(self.class_names) != cfg.model.num_classes:
            # more classes than outputs fails mid-epoch; fewer trains outputs no image ever has
            found = len(self.class_names)
            shown = ", ".join(self.class_names[:10]) + (", ..." if found > 10 else "")
            raise DataError(f"the data has {found} classes ({shown}), the model "
                            f"model.num_classes={cfg.model.num_classes}: set model.num_classes="
                            f"{found} (gfnet train --data DIR sets it from the folders)")
        torch.manual_seed(cfg.run.seed)  # the same initial weights on every rank
        layout = torch.channels_last if cfg.run.train_layout == "channels_last" else torch.contiguous_format
        self.model = self.build_model().to(self.device, memory_format=layout)
        if hasattr(self.model, "patches"):  # GFNet's crops hand the encoders patches in that layout
            self.model.patches.channels_last = layout is torch.channels_last
        amp = cfg.run.amp
        if amp == "auto":
            amp = "bf16" if self.device.type == "cuda" else "off"
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]
        self.results: dict[str, Any] = {}
        self._last_log = 0.0
        # class heads of the stage that started from model.init_from left fresh there (other
        # classes): trained in that stage even inside a frozen part; kept in its checkpoints
        self.fresh_heads: list[str] = []
        self._stage_modules: dict[int, nn.Module | None] = {}

    # ------------------------------------------------------------------ what a subclass changes
    # (the static baseline, train/baseline.py, trains another model through the same loop with
    # its own stage kind)
    def stage_kinds_for(self, cfg: Config) -> tuple[Stage, ...]:
        return gfnet_stage_kinds(cfg)

    def build_model(self) -> nn.Module:
        model = build_model(self.cfg.model, self.cfg.run.kernel_backend or None)
        model.policy.clamp_samples = self.cfg.ppo.clamp_actions
        return model

    @property
    def stages(self) -> tuple[int, ...]:
        return tuple(kind.number for kind in self.stage_kinds)

    def stage(self, number: int) -> Stage:
        for kind in self.stage_kinds:
            if kind.number == number:
                return kind
        raise ConfigError(f"stages must be among {', '.join(map(str, self.stages))}; got {number}")

    def stage_path(self, stage: int) -> Path:
        return self.stage(stage).checkpoint_path(self.out)

    def stage_label(self, stage: int) -> str:
        return self.stage(stage).label

    def stage_epochs(self, stage: int) -> int:
        return self.stage(stage).epochs(self.cfg)

    def stage_modules(self, stage: int) -> nn.Module | None:
        """The training-only modules of ``stage`` (Stage.make_modules; e.g. the mixture stage's
        candidate scorers), made once on this trainer's device: saved in the stage's checkpoint
        beside the model and loaded on resume, never part of the model."""
        if stage not in self._stage_modules:
            made = self.stage(stage).make_modules(self)
            self._stage_modules[stage] = made.to(self.device) if made is not None else None
        return self._stage_modules[stage]

    def num_outputs(self) -> int:
        """How many logits the runner returns per batch (GFNet: one per step)."""
        return self.model.max_steps

    def test_modes(self) -> tuple[str, ...]:
        return ("mean", "random")

    def eval_logits(self, images: torch.Tensor, mode: str, generator: torch.Generator | None):
        """Per-output logits of a batch in evaluation ("mean" = the policy's focus)."""
        return self.model(images, policy=mode, generator=generator)

    def final_extras(self, stage: int, test: dict[str, Any]) -> dict[str, Any]:
        """Extra fields of a finished stage's checkpoint."""
        return {"test": test}

    # ------------------------------------------------------------------ helpers
    def log(self, msg: str) -> None:
        if self.dist.is_main:
            print(msg, file=sys.stderr, flush=True)

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _seed_stage(self, stage: int) -> None:
        torch.manual_seed(self.cfg.run.seed * 7919 + 1000 * self.dist.rank + stage)

    def _per_rank_batch(self, bs: int) -> int:
        return max(1, bs // self.dist.world_size)

    def train_loader(self, epoch: int, batch_size: int) -> DataLoader:
        """The training data of ``epoch`` in batches of ``batch_size`` (all ranks together: the
        stage's, Stage.batch_size), split over the ranks."""
        ds = self.datasets["train"]
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(epoch)
        sampler = DistributedSampler(ds, num_replicas=self.dist.world_size, rank=self.dist.rank,
                                     shuffle=True, seed=self.cfg.run.seed, drop_last=True)
        sampler.set_epoch(epoch)
        bs = self._per_rank_batch(batch_size)
        return DataLoader(ds, batch_size=bs, sampler=sampler, num_workers=self.cfg.data.num_workers,
                          drop_last=len(sampler) >= bs, pin_memory=self.device.type == "cuda")

    def eval_loader(self, split: str) -> DataLoader:
        ds: Dataset = self.datasets[split]
        shard = Subset(ds, range(self.dist.rank, len(ds), self.dist.world_size))  # type: ignore[arg-type]
        bs = self._per_rank_batch(self.cfg.run.eval_batch_size or self.cfg.optim.batch_size)
        return DataLoader(shard, batch_size=bs, shuffle=False, num_workers=self.cfg.data.num_workers,
                          pin_memory=self.device.type == "cuda")

    def iterations(self, loader: DataLoader, cap: int) -> int:
        """Batches an epoch runs: the loader's, at most ``cap`` (0: no cap)."""
        n = len(loader)
        return min(n, cap) if cap > 0 else n

    def progress(self, it, total: int, desc: str):
        """``it`` with a tqdm bar (main rank, run.progress), else ``it`` itself."""
        if not (self.cfg.run.progress and self.dist.is_main):
            return it
        from tqdm import tqdm

        return tqdm(it, total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, split: str, modes: tuple[str, ...] = ("mean", "random")) -> dict[str, list[float]]:
        """Accuracy per step on a split, for each focus mode ("mean" = the policy)."""
        model = self.model
        was = {n: m.training for n, m in model.named_children()}
        model.eval()
        T = self.num_outputs()
        out: dict[str, list[float]] = {}
        loader = self.eval_loader(split)
        cap = self.cfg.run.max_eval_batches
        for mode in modes:
            gen = None
            if mode == "random":
                gen = torch.Generator(device=self.device).manual_seed(self.cfg.run.seed + 4242 + self.dist.rank)
            correct = torch.zeros(T + 1, dtype=torch.float64, device=self.device)
            for i, (x, y) in enumerate(loader):
                if cap and i >= cap:
                    break
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                with self.autocast():
                    logits = self.eval_logits(x, mode, gen)
                for t, lg in enumerate(logits):
                    correct[t] += (lg.argmax(1) == y).sum()
                correct[T] += y.numel()
            all_reduce_sum(correct, self.dist)
            n = max(float(correct[T]), 1.0)
            out["policy" if mode == "mean" else mode] = [round(float(c) / n, 5) for c in correct[:T]]
        for name, m in model.named_children():
            m.train(was[name])
        return out

    # ------------------------------------------------------------------ checkpoints
    def _rng_state(self) -> list[dict[str, torch.Tensor]]:
        st = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            st["cuda"] = torch.cuda.get_rng_state(self.device)
        return all_gather_object(st, self.dist)

    def _set_rng_state(self, states: list[dict[str, torch.Tensor]]) -> None:
        if len(states) != self.dist.world_size:
            self.log(f"note: checkpoint RNG state is for {len(states)} ranks, running "
                     f"{self.dist.world_size}; random streams reseeded")
            return
        st = states[self.dist.rank]
        torch.set_rng_state(st["torch"].cpu())
        if "cuda" in st and self.device.type == "cuda":
            torch.cuda.set_rng_state(st["cuda"].cpu(), self.device)

    def _callback(self, event: str, *args) -> None:
        for cb in self.callbacks:
            hook = getattr(cb, event, None)
            if hook is not None:
                hook(self, *args)

    def _save(self, stage: int, epoch: int, epochs: int, done: bool, opt, sched, scaler,
              extra: dict[str, Any]) -> None:
        rng = self._rng_state()  # collective: every rank takes part
        modules = self.stage_modules(stage)
        if self.dist.is_main:
            obj = {
                "format": ckpt.FORMAT, "kind": self.checkpoint_kind, "stage": stage, "epoch": epoch,
                "epochs": epochs, "done": done, "world_size": self.dist.world_size, "config": self.cfg.to_dict(),
                "class_names": self.class_names,
                "model": self.model.state_dict(),
                "stage_modules": modules.state_dict() if modules is not None else None,
                "optimizer": opt.state_dict() if opt is not None else None,
                "scheduler": sched.state_dict() if sched is not None else None,
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": rng, "fresh_heads": self.fresh_heads, **extra,
            }
            ckpt.save_atomic(obj, self.stage_path(stage))
        barrier(self.dist)
        self._callback("on_checkpoint_saved", stage, epoch, self.stage_path(stage))

    def _load(self, stage: int) -> dict[str, Any]:
        path = self.stage_path(stage)
        ck = ckpt.load(path, map_location="cpu")
        ckpt.check_compatible(ck, self.cfg.to_dict()["model"], path)
        if ck.get("stage") != stage:
            raise CheckpointError(f"checkpoint {str(path)!r} is for stage {ck.get('stage')}, not {stage}")
        return ck

    def _write_json(self, name: str, obj: Any) -> None:
        if self.dist.is_main:
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(json.dumps(obj, indent=2))
            os.replace(tmp, self.out / name)

    def _metrics(self, rec: dict[str, Any]) -> None:
        if self.dist.is_main:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")

    # ------------------------------------------------------------------ the run
    def preflight(self, stages: list[int]) -> dict[int, dict[str, Any] | None]:
        """Check the output folder and checkpoints before anything is written.

        Returns, per stage, its checkpoint to resume from (or None).
        """
        found = {s: self.stage_path(s) for s in stages if self.stage_path(s).exists()}
        if found and not self.resume:  # the stages to run would overwrite these
            raise CheckpointError(
                f"output folder {str(self.out)!r} already holds checkpoints "
                f"({', '.join(p.name for p in found.values())}); pass --resume to continue it "
                "or choose another --out (nothing was overwritten)")
        loaded: dict[int, dict[str, Any] | None] = {}
        for s in stages:
            loaded[s] = self._load(s) if s in found else None
        first = stages[0]
        before = self.previous_stage(first)
        if before is not None and loaded.get(first) is None:
            prev = self.stage_path(before)
            if not prev.exists() and self.warm_starts():
                return loaded  # starts from model.init_from (see warm_start)
            ck = self._load(before)
            if not ck.get("done"):
                raise CheckpointError(f"stage {before} checkpoint {str(prev)!r} is not finished "
                                      f"(epoch {ck.get('epoch')}/{ck.get('epochs')}); run "
                                      f"--stage {before} --resume first")
            loaded[before] = ck
        return loaded

    def previous_stage(self, stage: int) -> int | None:
        """The stage whose finished weights ``stage`` starts from (None for the first)."""
        numbers = self.stages
        i = numbers.index(stage)
        return numbers[i - 1] if i > 0 else None

    def writes_run_config(self) -> bool:
        """Whether this run writes its config as the run folder's config.yaml (GFNet's always)."""
        return True

    def warm_starts(self) -> bool:
        """Whether a fresh first stage starts from ``model.init_from`` (train/warm_start.py)."""
        return bool(self.cfg.model.init_from)

    def run(self, stages: list[int]) -> dict[str, Any]:
        stages = sorted(set(stages))
        if not stages or any(s not in self.stages for s in stages):
            raise ConfigError(f"stages must be among {', '.join(map(str, self.stages))}; got {stages}")
        # a resumed run with other settings hears first what changed; a fresh one in a used
        # folder first that it would overwrite checkpoints
        if self.resume:
            check_run_config(self.out, self.cfg, force=self.force)
        loaded = self.preflight(stages)
        if not self.resume:
            check_run_config(self.out, self.cfg, force=self.force)
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            if self.writes_run_config():
                save_run_config(self.out, self.cfg)
        barrier(self.dist)
        res_path = self.out / "results.json"
        if res_path.exists():  # merge: other stages' (and the baseline's) results stay
            try:
                self.results = json.loads(res_path.read_text())
            except json.JSONDecodeError:
                self.results = {}
        first = stages[0]
        before = self.previous_stage(first)
        if before is not None and loaded.get(first) is None and loaded.get(before) is not None:
            ckpt.load_model_state(self.model, loaded[before]["model"], self.stage_path(before))
        elif loaded.get(first) is None and self.warm_starts():
            # a fresh first stage starts from model.init_from (a resumed one has its own weights)
            from .warm_start import warm_start

            note, self.fresh_heads = warm_start(self.model, self.cfg.model.init_from,
                                                self.cfg.to_dict()["model"], first)
            self.log(note)
        for s in stages:
            ck = loaded.get(s)
            if ck is not None and ck.get("done"):
                ckpt.load_model_state(self.model, ck["model"], self.stage_path(s))
                self.log(f"{self.stage_label(s)}: already complete in {self.stage_path(s)}, skipped")
                if ck.get("epochs") != self.stage_epochs(s):  # e.g. --epochs with --force
                    self.log(f"note: {self.stage_label(s)} finished after {ck.get('epochs')} "
                             f"epochs; the config's {self.stage_epochs(s)} do not reopen it "
                             "(train it again into another --out for that)")
                continue
            self.train_stage(s, ck)
            self.fresh_heads = []  # learned in the stage that started fresh; later stages as usual
        self._callback("on_run_end", self.results)
        return self.results

    def train_stage(self, stage: int, ck: dict[str, Any] | None) -> None:
        cfg = self.cfg
        kind = self.stage(stage)
        epochs = kind.epochs(cfg)
        label = kind.label
        self._seed_stage(stage)
        if ck is not None:
            self.fresh_heads = list(ck.get("fresh_heads", []))
        kind.set_trainable(self)
        opt = kind.optimizer(self)
        iters = self.iterations(self.train_loader(0, kind.batch_size(cfg)), cfg.run.max_train_batches)
        unit_total = max(1, epochs if cfg.optim.schedule_unit == "epoch" else epochs * iters)
        sched = kind.scheduler(opt, unit_total)
        scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        start = 0
        if ck is not None:
            path = self.stage_path(stage)
            ckpt.load_model_state(self.model, ck["model"], path)
            modules = self.stage_modules(stage)
            if modules is not None:
                if ck.get("stage_modules") is None:
                    raise CheckpointError(f"checkpoint {str(path)!r} has no state of the stage's own "
                                          f"modules ({type(modules).__name__}) to resume from")
                try:
                    modules.load_state_dict(ck["stage_modules"])
                except RuntimeError as e:  # other shapes: made with other options of the stage
                    raise CheckpointError(f"checkpoint {str(path)!r} holds the stage's own modules in "
                                          f"other shapes than this config makes (were the stage's "
                                          f"options changed since it was written?): {e}") from None
            try:
                if ck.get("optimizer") is not None:
                    opt.load_state_dict(ck["optimizer"])
                if sched is not None and ck.get("scheduler") is not None:
                    sched.load_state_dict(ck["scheduler"])
                if scaler is not None and ck.get("scaler") is not None:
                    scaler.load_state_dict(ck["scaler"])
            except (ValueError, KeyError, RuntimeError) as e:
                raise CheckpointError(f"checkpoint {str(path)!r}: optimiser state does not fit ({e})") from None
            start = int(ck["epoch"])
            self._set_rng_state(ck["rng"])
            self.log(f"{label}: resuming after epoch {start}/{epochs} from {path}")
        if self.dist.is_main:
            discard_unsaved_progress(self.out, self.stage_path(stage), stage, start)
        runner = kind.runner(self)
        if self.dist.enabled:
            runner = DDP(runner, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                         find_unused_parameters=kind.find_unused_parameters(cfg))
        for epoch in range(start, epochs):
            t0 = time.time()
            kind.set_trainable(self)
            rec = kind.run_epoch(self, runner, opt, sched, scaler, epoch, epochs)
            if cfg.optim.schedule_unit == "epoch" and sched is not None:
                sched.step()
            average_buffers(self.model, self.dist)
            val = self.evaluate("val", kind.val_modes)
            mode, acc = primary_val(val)
            rec.update(stage=stage, stage_title=kind.title, epoch=epoch + 1, epochs=epochs, val=val,
                       val_mode=mode, val_accuracy=acc,
                       trains_glance=kind.trains_glance(self), epoch_time_s=round(time.time() - t0, 2),
                       time=time.time())
            self._metrics(rec)
            self.log(f"{label} epoch {epoch + 1}/{epochs}: loss {rec['loss']:.4f} "
                     f"val acc/step {' '.join(f'{a:.3f}' for a in acc)} "
                     f"({rec['images_per_s']:.0f} img/s, {rec['epoch_time_s']:.0f}s)")
            done = epoch + 1 == epochs
            if done:
                self._warn_about_curve(stage)
            extra = self.final_extras(stage, self._test(stage)) if done else {}
            self._save(stage, epoch + 1, epochs, done, opt, sched, scaler, extra)
        if epochs == 0 or start >= epochs:
            self._save(stage, epochs, epochs, True, opt, sched, scaler, self.final_extras(stage, self._test(stage)))

    def _warn_about_curve(self, stage: int) -> None:
        """Log what the stage's validation curve warns of (train/curves.py): a stage ending near
        chance, a glance that never learned, accuracy still climbing steeply, or falling with steps."""
        if not self.dist.is_main:
            return
        curves = [c for c in stage_curves(read_metrics(self.out / "metrics.jsonl")) if c.stage == stage]
        for curve in curves:
            for warning in curve_warnings(curve, self.cfg.model.num_classes):
                self.log(f"warning: {warning}")

    def _test(self, stage: int) -> dict[str, list[float]]:
        test = self.evaluate("test", self.test_modes())
        self.results[self.stage_label(stage).replace(" ", "")] = test
        self._write_json("results.json", self.results)
        self.log(f"{self.stage_label(stage)} test accuracy per step: "
                 + " ".join(f"{k} {v}" for k, v in test.items()))
        return test


def discard_unsaved_progress(out: Path, checkpoint: Path, stage: int, saved_epoch: int) -> None:
    """Removes what an interrupted run left of ``stage`` beyond its checkpoint (``saved_epoch``
    epochs done): metrics.jsonl rows of later epochs of the stage (an epoch's row is written
    before its checkpoint, so a kill in between left a row the resumed run writes again; the
    file is rewritten atomically) and the temporary files of checkpoint writes that were killed
    (``.<checkpoint name>.*.tmp``, see ``checkpoint.save_atomic``)."""
    for stale in out.glob(f".{checkpoint.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    metrics = out / "metrics.jsonl"
    if not metrics.is_file():
        return
    lines = metrics.read_text().splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            row = None  # a line cut by the kill: dropped
        if isinstance(row, dict) and not (row.get("stage") == stage and int(row.get("epoch", 0)) > saved_epoch):
            kept.append(line if line.endswith("\n") else line + "\n")
    if kept != lines:
        write_atomic(metrics, "".join(kept).encode())


def train(cfg: Config, out_dir: str | Path, stages: list[int], resume: bool = False,
          callbacks: Sequence[TrainerCallback] = (), force: bool = False) -> dict[str, Any]:
    """Run ``stages`` of GFNet's training into ``out_dir`` (under torchrun: data parallel);
    returns the test accuracy per step of each stage (``results.json``). ``out_dir/config.yaml``
    records ``cfg``; a config that differs from the one recorded there is refused unless
    ``force`` (gfnet.run_config)."""
    info = setup(cfg.run.device)
    try:
        return Trainer(cfg, out_dir, resume=resume, dist_info=info, callbacks=callbacks,
                       force=force).run(stages)
    finally:
        teardown(info)
