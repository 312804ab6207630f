"""Training: the three GFNet stages (trainer), PPO, checkpoints, DDP plumbing."""

from .ppo import PolicyEvaluator, RolloutMemory, discounted_returns, ppo_loss, ppo_update
from .trainer import Trainer, set_trainable, stage_loss, train, trained_parts

__all__ = ["PolicyEvaluator", "RolloutMemory", "Trainer", "discounted_returns", "ppo_loss", "ppo_update",
           "set_trainable", "stage_loss", "train", "trained_parts"]
