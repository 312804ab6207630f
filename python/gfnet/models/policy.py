"""Actor-critic patch-location policy.

state (previous step's feature map, detached) -> state encoder (MLP on the flattened map, or
1x1 conv + MLP) -> GRU cell -> actor (Linear(2) + sigmoid: the mean location in [0, 1]^2) and
critic (Linear(1)). Actions are Gaussian around the mean with a fixed std; inference uses the
mean. A sampled action is clamped to [0, 1] before its log-probability is taken
(``clamp_samples``, as the official code does; off: the raw sample and its exact density,
clamped only when turned into pixels).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ActorCritic(nn.Module):
    def __init__(self, fmap_shape: tuple[int, int, int], *, state: str = "mlp", mlp_width: int = 1024,
                 conv_channels: int = 32, conv_bias: bool = True, hidden: int = 1024,
                 action_std: float = 0.1, clamp_samples: bool = True):
        super().__init__()
        c, h, w = fmap_shape
        if state == "mlp":
            self.encoder = nn.Sequential(
                nn.Flatten(), nn.Linear(c * h * w, mlp_width), nn.ReLU(inplace=True),
                nn.Linear(mlp_width, hidden), nn.ReLU(inplace=True))
        elif state == "conv":
            self.encoder = nn.Sequential(
                nn.Conv2d(c, conv_channels, 1, bias=conv_bias), nn.ReLU(inplace=True), nn.Flatten(),
                nn.Linear(conv_channels * h * w, hidden), nn.ReLU(inplace=True))
        else:
            raise ValueError(f"unknown policy state encoder {state!r}")
        self.gru = nn.GRUCell(hidden, hidden)
        self.actor = nn.Linear(hidden, 2)
        self.critic = nn.Linear(hidden, 1)
        self.hidden_size = hidden
        self.fmap_shape = (c, h, w)
        self.action_std = float(action_std)
        self.clamp_samples = clamp_samples  # a training option (ppo.clamp_actions), set by the trainer

    def init_hidden(self, n: int, device=None, dtype=torch.float32) -> torch.Tensor:
        return torch.zeros(n, self.hidden_size, device=device, dtype=dtype)

    def forward(self, fmap: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (mean action (n, 2) in [0, 1], value (n,), new hidden (n, H))."""
        z = self.encoder(fmap.to(self.actor.weight.dtype))
        h = self.gru(z, h.to(z.dtype))
        return torch.sigmoid(self.actor(h)), self.critic(h).squeeze(1), h

    def log_prob(self, mean: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Log density of the fixed-std diagonal Gaussian, summed over the 2 coordinates."""
        var = self.action_std ** 2
        return (-((action - mean) ** 2) / (2 * var)
                - math.log(self.action_std) - 0.5 * math.log(2 * math.pi)).sum(-1)

    def entropy(self, n: int, device=None) -> torch.Tensor:
        e = 2 * (0.5 + 0.5 * math.log(2 * math.pi) + math.log(self.action_std))
        return torch.full((n,), e, device=device)

    def act(self, fmap: torch.Tensor, h: torch.Tensor, mode: str = "mean",
            generator: torch.Generator | None = None):
        """One policy step. mode: "mean" (inference) or "sample" (PPO rollouts).

        Returns (action (n, 2), log_prob (n,), value (n,), new hidden).
        A sampled action is clamped to [0, 1] first when ``clamp_samples`` (its log-prob is then
        that of the clamped point); unclamped otherwise, and patch extraction clamps it.
        """
        mean, value, h = self(fmap, h)
        if mode == "mean":
            action = mean
        elif mode == "sample":
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            action = mean + self.action_std * noise
            if self.clamp_samples:
                action = action.clamp(0.0, 1.0)
        else:
            raise ValueError(f"unknown policy mode {mode!r}")
        return action, self.log_prob(mean, action), value, h

    def evaluate(self, fmaps: list[torch.Tensor], actions: list[torch.Tensor]):
        """Re-run the policy over a stored rollout (PPO update).

        fmaps[k], actions[k]: the state and action of focus decision k (k = 0 .. T-2).
        Returns (log_probs (K, n), values (K, n), entropy (K, n)).
        """
        n = fmaps[0].shape[0]
        h = self.init_hidden(n, fmaps[0].device, self.actor.weight.dtype)
        logps, values = [], []
        for fmap, action in zip(fmaps, actions):
            mean, value, h = self(fmap, h)
            logps.append(self.log_prob(mean, action))
            values.append(value)
        lp, v = torch.stack(logps), torch.stack(values)
        return lp, v, self.entropy(n, lp.device).expand_as(lp)
