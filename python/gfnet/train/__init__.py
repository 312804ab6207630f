"""Training: the trainer, the kinds of stage (GFNet's, per policy training recipe, and the
static baseline's), PPO, callbacks, DDP plumbing."""

from .callbacks import TrainerCallback
from .ppo import PolicyEvaluator, RolloutMemory, discounted_returns, ppo_loss, ppo_update
from .stages import (ClassifierStage, EndToEndStage, FineTuneStage, PolicyStage, Stage, WarmUpStage,
                     gfnet_stages, set_trainable, stage_loss, trained_parts)
from .trainer import Trainer, train

__all__ = ["ClassifierStage", "EndToEndStage", "FineTuneStage", "PolicyEvaluator", "PolicyStage", "RolloutMemory",
           "Stage", "Trainer", "TrainerCallback", "WarmUpStage", "discounted_returns", "gfnet_stages", "ppo_loss",
           "ppo_update", "set_trainable", "stage_loss", "train", "trained_parts"]
