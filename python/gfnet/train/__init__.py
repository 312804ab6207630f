"""Training: the three GFNet stages (trainer), the static baseline, PPO, callbacks, DDP plumbing."""

from .callbacks import TrainerCallback
from .ppo import PolicyEvaluator, RolloutMemory, discounted_returns, ppo_loss, ppo_update
from .trainer import Trainer, set_trainable, stage_loss, train, trained_parts

__all__ = ["PolicyEvaluator", "RolloutMemory", "Trainer", "TrainerCallback", "discounted_returns", "ppo_loss",
           "ppo_update", "set_trainable", "stage_loss", "train", "trained_parts"]
