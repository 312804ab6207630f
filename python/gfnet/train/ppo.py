"""PPO for the patch-location policy (stage 2).

One rollout per mini-batch: the glance, then T - 1 focus steps with actions sampled from the
Gaussian policy; the reward of the action taken before step t is the gain in the softmax
probability of the true class, r_t = p_t(y) - p_{t-1}(y). Returns are discounted (gamma) and
normalised over the batch; advantage = return - V; the loss is the clipped surrogate plus the
value loss minus the entropy bonus.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PPOConfig


@dataclass
class RolloutMemory:
    """One mini-batch's rollout: K = T - 1 focus decisions for n samples."""

    states: list[torch.Tensor] = field(default_factory=list)  # K x (n, C, h, w)
    actions: list[torch.Tensor] = field(default_factory=list)  # K x (n, 2)
    log_probs: list[torch.Tensor] = field(default_factory=list)  # K x (n,)
    rewards: list[torch.Tensor] = field(default_factory=list)  # K x (n,)

    def add(self, state: torch.Tensor, action: torch.Tensor, log_prob: torch.Tensor,
            reward: torch.Tensor) -> None:
        self.states.append(state.detach().float())
        self.actions.append(action.detach().float())
        self.log_probs.append(log_prob.detach().float())
        self.rewards.append(reward.detach().float())

    def clear(self) -> None:
        for lst in (self.states, self.actions, self.log_probs, self.rewards):
            lst.clear()

    def __len__(self) -> int:
        return len(self.actions)


def discounted_returns(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """rewards (K, n) -> returns (K, n), G_k = r_k + gamma * G_{k+1}."""
    out = torch.empty_like(rewards)
    g = torch.zeros_like(rewards[0])
    for k in range(rewards.shape[0] - 1, -1, -1):
        g = rewards[k] + gamma * g
        out[k] = g
    return out


def true_class_prob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.softmax(logits.float(), dim=1).gather(1, labels[:, None]).squeeze(1)


class PolicyEvaluator(nn.Module):
    """``forward(states, actions) -> (log_probs, values, entropy)``; the module DDP wraps."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, states: list[torch.Tensor], actions: list[torch.Tensor]):
        return self.policy.evaluate(states, actions)


def ppo_loss(evaluator: nn.Module, memory: RolloutMemory, cfg: PPOConfig) -> tuple[torch.Tensor, dict]:
    rewards = torch.stack(memory.rewards)
    returns = discounted_returns(rewards, cfg.gamma)
    if cfg.normalize_returns and returns.numel() > 1:
        returns = (returns - returns.mean()) / (returns.std() + 1e-5)
    old_logp = torch.stack(memory.log_probs)
    logp, values, entropy = evaluator(memory.states, memory.actions)
    values = values.float()
    ratio = torch.exp(logp.float() - old_logp)
    adv = returns - values.detach()
    surr1 = ratio * adv
    surr2 = torch.clamp(ratio, 1 - cfg.clip, 1 + cfg.clip) * adv
    policy_loss = -torch.min(surr1, surr2).mean()
    value_loss = F.mse_loss(values, returns)
    ent = entropy.float().mean()
    loss = policy_loss + cfg.value_coef * value_loss - cfg.entropy_coef * ent
    stats = {"policy_loss": float(policy_loss.detach()), "value_loss": float(value_loss.detach()),
             "reward": float(rewards.sum(0).mean())}
    return loss, stats


def ppo_update(evaluator: nn.Module, optimizer: torch.optim.Optimizer, memory: RolloutMemory,
               cfg: PPOConfig) -> dict:
    """``cfg.ppo_epochs`` PPO epochs on one rollout; returns the last epoch's stats."""
    stats: dict = {}
    for _ in range(max(1, cfg.ppo_epochs)):
        loss, stats = ppo_loss(evaluator, memory, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return stats
