"""The GFNet module: glance, focus, classifier and policy, as explicit steps on explicit state.

Step 1 (glance): whole image -> P x P (crop_resize) -> global encoder -> classifier -> logits.
Step t > 1 (focus): policy(previous feature map, policy hidden) -> location -> P x P crop at full
resolution (crop_resize, integer box) -> local encoder -> classifier -> logits.

The per-sample state between steps is a :class:`GFState` of plain tensors (classifier state,
policy hidden, last feature map), so an inference engine can keep only the rows still active
(``model.kernels.gather_rows`` on ``state.tensors()``, back with ``GFState.from_tensors``) and
pass ``batch_index`` to read their images in place.

``model.kernels`` is the model's gfkernels policy (one backend for crop_resize, early_exit and
gather_rows, resolved once per device; ``run.kernel_backend`` in the config): the model crops
with it and the engines (gfnet.inference) exit and compact with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import ModelConfig
from ..precision import FP32, InferenceFormat
from .backbones import Backbone, build_backbone
from .prepack import networks_for_inference
from .patches import Patches, continuous_focus_boxes, focus_boxes, model_kernels, whole_image_boxes
from .policy import ActorCritic


@dataclass
class GFState:
    """Per-sample state after ``step`` steps. Every tensor has the batch in dim 0."""

    cls: torch.Tensor  # GRU hidden (n, H), or concatenated features so far (n, step * D)
    policy_h: torch.Tensor  # policy GRU hidden (n, Hp)
    fmap: torch.Tensor  # last step's feature map, detached (n, C, h, w): the policy's input
    step: int

    def tensors(self) -> list[torch.Tensor]:
        return [self.cls, self.policy_h, self.fmap]

    @classmethod
    def from_tensors(cls, tensors: list[torch.Tensor], step: int) -> "GFState":
        c, h, f = tensors
        return cls(c, h, f, step)

    def __len__(self) -> int:
        return self.cls.shape[0]


@dataclass(frozen=True)
class EncoderHead:
    """An encoder's own head and the features it would read, for its logits on demand. Only the
    training's auxiliary loss reads them; inference never does, and computing them at every
    step cost resnet50 a 2048 x 1000 product per image and step (about 1 % of a run)."""

    head: nn.Module
    features: torch.Tensor

    def logits(self) -> torch.Tensor:
        return self.head(self.features)


@dataclass
class StepOutput:
    logits: torch.Tensor  # (n, K) classifier output at this step
    encoder_head: EncoderHead  # the encoder's own head on this step's features (head_logits)
    state: GFState  # state after this step
    action: torch.Tensor | None = None  # (n, 2) location used (focus steps)
    log_prob: torch.Tensor | None = None  # (n,) policy log-prob of action ("sample" mode)
    value: torch.Tensor | None = None  # (n,) critic value
    policy_input: torch.Tensor | None = None  # fmap the policy decided on (PPO memory)
    boxes: torch.Tensor | None = None  # (n, 4) the box cropped: the whole image (glance), the focus box

    @property
    def head_logits(self) -> torch.Tensor:
        """(n, K) the encoder's own head on this step's features, computed when asked (in the
        grad and autocast mode of the caller: the training's loss asks where it ran the step)."""
        return self.encoder_head.logits()


class GRUClassifier(nn.Module):
    """GRU over the steps' features + a linear head (ResNet/DenseNet/RegNet).

    ``shared_head``: one head for every step (the official code) instead of one per step.
    ``glance_from_head``: step 1's prediction is the global encoder's own head on the glance
    features (the official RegNet); the GRU still reads them.
    """

    def __init__(self, feature_dim: int, hidden: int, num_classes: int, steps: int, *,
                 shared_head: bool = False, glance_from_head: bool = False):
        super().__init__()
        self.gru = nn.GRUCell(feature_dim, hidden)
        self.heads = nn.ModuleList(nn.Linear(hidden, num_classes) for _ in range(1 if shared_head else steps))
        self.hidden = hidden
        self.glance_from_head = glance_from_head

    def init_state(self, n: int, device, dtype) -> torch.Tensor:
        return torch.zeros(n, self.hidden, device=device, dtype=dtype)

    def forward(self, feat: torch.Tensor, state: torch.Tensor, step: int, glance_head: nn.Module):
        h = self.gru(feat, state.to(feat.dtype))
        if step == 0 and self.glance_from_head:
            return glance_head(feat), h
        return self.heads[min(step, len(self.heads) - 1)](h), h


class ConcatClassifier(nn.Module):
    """Concatenated features of all steps so far -> per-step linear head (MobileNet/EfficientNet).

    Step 1 uses the global encoder's own classifier (passed in as ``glance_head``).
    """

    def __init__(self, feature_dim: int, num_classes: int, steps: int):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(feature_dim * (t + 1), num_classes)
                                   for t in range(1, steps))
        self.feature_dim = feature_dim

    def init_state(self, n: int, device, dtype) -> torch.Tensor:
        return torch.zeros(n, 0, device=device, dtype=dtype)

    def forward(self, feat: torch.Tensor, state: torch.Tensor, step: int, glance_head: nn.Module):
        cat = torch.cat([state.to(feat.dtype), feat], dim=1)
        logits = glance_head(feat) if step == 0 else self.heads[step - 1](cat)
        return logits, cat


class GFNet(nn.Module):
    def __init__(self, cfg: ModelConfig, *, kernel_backend: str | None = None):
        super().__init__()
        self.cfg = cfg
        self.patch_size = cfg.patch_size
        self.max_steps = cfg.max_steps
        self.kernels = model_kernels(kernel_backend)
        self.patches = Patches(self.kernels, cfg.patch_size, glance_mode=cfg.glance_mode,
                               glance_align_corners=cfg.glance_align_corners, mean=cfg.mean,
                               std=cfg.std)
        kw = dict(num_classes=cfg.num_classes, in_channels=cfg.in_channels,
                  pretrained=cfg.pretrained, width=cfg.width, weights=cfg.backbone_weights)
        self.global_encoder: Backbone = build_backbone(cfg.backbone, **kw)
        self.local_encoder: Backbone = build_backbone(cfg.backbone, **kw)
        fmap_shape = self.local_encoder.fmap_shape(cfg.in_channels, cfg.patch_size)
        self.fmap_shape = fmap_shape
        d = self.local_encoder.feature_dim
        if cfg.classifier == "gru":
            self.classifier: nn.Module = GRUClassifier(d, cfg.classifier_hidden, cfg.num_classes,
                                                       cfg.max_steps, shared_head=cfg.classifier_shared_head,
                                                       glance_from_head=cfg.glance_from_head)
        else:
            self.classifier = ConcatClassifier(d, cfg.num_classes, cfg.max_steps)
        self.policy = ActorCritic(fmap_shape, state=cfg.policy_state, mlp_width=cfg.policy_mlp_width,
                                  conv_channels=cfg.policy_conv_channels, conv_bias=cfg.policy_conv_bias,
                                  hidden=cfg.policy_hidden, action_std=cfg.action_std)
        # how the inference engines run the networks (gfnet.precision); training ignores it
        self.inference_format = FP32

    def set_inference_format(self, fmt: InferenceFormat) -> GFNet:
        """Run the networks in ``fmt`` at inference (gfnet.inference's engines): its precision
        by autocast, its layout by converting the convolutions' weights now (their activations
        follow the weights), and with ``fmt.fold_batch_norm`` the batch norms folded into the
        convolutions (for good: the model is then for inference only; gfnet.models.folding) and
        the convolutions of the backbones that gain from it, and its large linears, packed for
        oneDNN once on the CPU (gfnet.models.prepack)."""
        networks_for_inference(self, fmt)
        self.patches.channels_last = fmt.channels_last
        self.inference_format = fmt
        return self

    # ------------------------------------------------------------------ patches
    def glance_boxes(self, images: torch.Tensor, n: int) -> torch.Tensor:
        """(n, 4) the whole-image boxes of the glance (one cached box, expanded)."""
        return whole_image_boxes(images, n)

    def glance_input(self, images: torch.Tensor, batch_index: torch.Tensor | None = None, *,
                     boxes: torch.Tensor | None = None) -> torch.Tensor:
        """The glance patches (``boxes``: their glance boxes, if already made)."""
        if boxes is None:
            boxes = self.glance_boxes(images, self._n(images, batch_index))
        return self.patches.glance(images, boxes, batch_index)

    def focus_boxes(self, images: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """(n, 4) the P x P focus boxes of ``actions`` on ``images``' pixels."""
        return focus_boxes(actions, tuple(images.shape[-2:]), self.patch_size)

    def focus_input(self, images: torch.Tensor, actions: torch.Tensor,
                    batch_index: torch.Tensor | None = None, *,
                    boxes: torch.Tensor | None = None) -> torch.Tensor:
        """The focus patches at ``actions`` (``boxes``: their focus boxes, if already made)."""
        if images.shape[-1] < self.patch_size or images.shape[-2] < self.patch_size:
            raise ValueError(f"image {tuple(images.shape[-2:])} is smaller than the patch size "
                             f"{self.patch_size}")
        if boxes is None:
            boxes = self.focus_boxes(images, actions)
        return self.patches.focus(images, boxes, batch_index)

    # ------------------------------------------------------------------ steps
    def _classify(self, feat: torch.Tensor, cls: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The recurrent classifier on this step's features: always in float32, like the policy.
        Under autocast it would carry its state in bf16 or fp16 from step to step, and rounding
        there moves the logits most: bf16 inference of the digits demo agreed with fp32 on 99.45 %
        of the glance's answers with the classifier under autocast, on 99.70 % with it in float32
        (bench/RESULTS.md). It is tiny next to the encoders. Without autocast nothing changes."""
        if not torch.is_autocast_enabled(feat.device.type):
            return self.classifier(feat, cls, step, self.global_encoder.head)
        with torch.autocast(feat.device.type, enabled=False):
            return self.classifier(feat.float(), cls.float(), step, self.global_encoder.head)

    def _n(self, images: torch.Tensor, batch_index: torch.Tensor | None) -> int:
        return images.shape[0] if batch_index is None else batch_index.shape[0]

    def glance_step(self, images: torch.Tensor, batch_index: torch.Tensor | None = None) -> StepOutput:
        """Step 1 on ``images`` (or the rows ``batch_index`` of it)."""
        n = self._n(images, batch_index)
        boxes = self.glance_boxes(images, n)
        x = self.glance_input(images, batch_index, boxes=boxes)
        feat, fmap = self.global_encoder(x)
        cls0 = self.classifier.init_state(n, feat.device, feat.dtype)
        logits, cls = self._classify(feat, cls0, 0)
        h0 = self.policy.init_hidden(n, feat.device, self.policy.actor.weight.dtype)
        return StepOutput(logits, EncoderHead(self.global_encoder.head, feat),
                          GFState(cls, h0, fmap.detach(), 1), boxes=boxes)

    def focus_step(self, images: torch.Tensor, state: GFState, *, batch_index: torch.Tensor | None = None,
                   policy: str = "mean", action: torch.Tensor | None = None,
                   generator: torch.Generator | None = None, differentiable: bool = False) -> StepOutput:
        """One focus step: policy action -> crop -> local encoder -> classifier.

        policy: "mean" (deterministic, inference), "sample" (Gaussian exploration, PPO),
        "random" (uniform locations; the policy is not run) or "given" (use ``action``).
        differentiable: crop at the action's exact position (continuous_focus_boxes, a bilinear
        read between pixels) instead of the whole-pixel box, so that a loss on this step's
        outputs reaches the action and, through it, the policy (the differentiable policy
        training; inference always crops whole pixels).
        """
        step = state.step
        if step >= self.max_steps:
            raise ValueError(f"all {self.max_steps} steps already taken")
        n = len(state)
        log_prob = value = None
        policy_h = state.policy_h
        if policy == "random":
            action = torch.rand(n, 2, generator=generator,
                                device=generator.device if generator is not None else state.fmap.device)
            action = action.to(state.fmap.device)
        elif policy == "given":
            if action is None:
                raise ValueError("policy='given' needs an action")
        else:
            train_policy = torch.is_grad_enabled() and any(p.requires_grad for p in self.policy.parameters())
            # the policy is tiny and its log-probs feed PPO ratios: always run it in float32
            with torch.set_grad_enabled(train_policy), \
                    torch.autocast(state.fmap.device.type, enabled=False):
                action, log_prob, value, policy_h = self.policy.act(state.fmap.float(), state.policy_h,
                                                                    policy, generator)
        if differentiable:
            boxes = continuous_focus_boxes(action, tuple(images.shape[-2:]), self.patch_size)
        else:
            boxes = self.focus_boxes(images, action)  # once: cropped here, recorded by the engine
        x = self.focus_input(images, action, batch_index, boxes=boxes)
        feat, fmap = self.local_encoder(x)
        logits, cls = self._classify(feat, state.cls, step)
        new_state = GFState(cls, policy_h, fmap.detach(), step + 1)
        return StepOutput(logits, EncoderHead(self.local_encoder.head, feat), new_state, action,
                          log_prob, value, state.fmap, boxes)

    def focus_step_groups(self, images: torch.Tensor, states: list[GFState], *,
                          batch_index: torch.Tensor) -> list[StepOutput]:
        """One inference focus step (the policy's mean location) for groups of rows at different
        steps, ``states[g]`` holding the rows of one step.

        The policy, the crop and the local encoder are the same network at every step, so they
        run once on all the rows (the groups in order; ``batch_index`` their rows of
        ``images``); the classifier runs once per group, since its state (concatenated features)
        or its head can depend on the step. Each group gets what :meth:`focus_step` would give it.
        """
        if not states:
            raise ValueError("focus_step_groups needs at least one group of rows")
        for s in states:
            if s.step >= self.max_steps:
                raise ValueError(f"all {self.max_steps} steps already taken by a group")
        sizes = [len(s) for s in states]
        if batch_index.shape[0] != sum(sizes):
            raise ValueError(f"batch_index has {batch_index.shape[0]} rows, the groups {sum(sizes)}")

        def joined(tensors: list[torch.Tensor]) -> torch.Tensor:
            return tensors[0] if len(tensors) == 1 else torch.cat(tensors)

        fmap_in = joined([s.fmap for s in states])
        # as in focus_step: the policy runs in float32, outside autocast
        with torch.autocast(fmap_in.device.type, enabled=False):
            action, _, value, policy_h = self.policy.act(fmap_in.float(),
                                                         joined([s.policy_h for s in states]), "mean")
        boxes = self.focus_boxes(images, action)
        x = self.focus_input(images, action, batch_index, boxes=boxes)
        feat, fmap = self.local_encoder(x)
        fmap = fmap.detach()
        outs, start = [], 0
        for s, n in zip(states, sizes):
            rows = slice(start, start + n)
            start += n
            logits, cls = self._classify(feat[rows], s.cls, s.step)
            head = EncoderHead(self.local_encoder.head, feat[rows])
            outs.append(StepOutput(logits, head, GFState(cls, policy_h[rows], fmap[rows], s.step + 1),
                                   action[rows], None, value[rows], s.fmap, boxes[rows]))
        return outs

    def rollout(self, images: torch.Tensor, *, policy: str = "mean", actions: list[torch.Tensor] | None = None,
                steps: int | None = None, generator: torch.Generator | None = None,
                glance: StepOutput | None = None, differentiable: bool = False) -> list[StepOutput]:
        """All steps on the whole batch; ``actions`` (T-1 tensors) forces the focus locations.
        ``glance``: this batch's glance step, already taken (two rollouts from one glance);
        ``differentiable``: the focus steps' (focus_step)."""
        steps = self.max_steps if steps is None else steps
        outs = [self.glance_step(images) if glance is None else glance]
        for t in range(1, steps):
            if actions is not None:
                outs.append(self.focus_step(images, outs[-1].state, policy="given", action=actions[t - 1],
                                            differentiable=differentiable))
            else:
                outs.append(self.focus_step(images, outs[-1].state, policy=policy, generator=generator,
                                            differentiable=differentiable))
        return outs

    def forward(self, images: torch.Tensor, policy: str = "mean",
                generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Anytime prediction: the logits of every step, [(B, K)] * T."""
        return [o.logits for o in self.rollout(images, policy=policy, generator=generator)]

    # ------------------------------------------------------------------ parameter groups
    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named parts, each trained or frozen as a whole by the stages."""
        return {
            "global_encoder": list(self.global_encoder.parameters()),
            "local_encoder": list(self.local_encoder.parameters()),
            "classifier": list(self.classifier.parameters()),
            "policy": list(self.policy.parameters()),
        }


def build_model(cfg: ModelConfig, kernel_backend: str | None = None) -> GFNet:
    return GFNet(cfg, kernel_backend=kernel_backend)


__all__ = ["GFNet", "GFState", "StepOutput", "build_model"]
