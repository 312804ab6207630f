"""Training: the trainer, the kinds of stage (GFNet's three, the static baseline), PPO,
callbacks, DDP plumbing."""

from .callbacks import TrainerCallback
from .ppo import PolicyEvaluator, RolloutMemory, discounted_returns, ppo_loss, ppo_update
from .stages import (ClassifierStage, FineTuneStage, PolicyStage, Stage, WarmUpStage, set_trainable, stage_loss,
                     trained_parts)
from .trainer import Trainer, train

__all__ = ["ClassifierStage", "FineTuneStage", "PolicyEvaluator", "PolicyStage", "RolloutMemory", "Stage",
           "Trainer", "TrainerCallback", "WarmUpStage", "discounted_returns", "ppo_loss", "ppo_update",
           "set_trainable", "stage_loss", "train", "trained_parts"]
