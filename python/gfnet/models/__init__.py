"""GFNet models: backbone registry, the GFNet module and the actor-critic policy."""

from .backbones import BACKBONES, Backbone, build_backbone, list_backbones, register_backbone
from .gfnet import GFNet, GFState, StepOutput, build_model
from .policy import ActorCritic

__all__ = ["BACKBONES", "ActorCritic", "Backbone", "GFNet", "GFState", "StepOutput", "build_backbone",
           "build_model", "list_backbones", "register_backbone"]
