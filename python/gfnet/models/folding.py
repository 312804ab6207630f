"""Batch norm folded into the convolution before it, for inference.

In eval mode a BatchNorm2d is a per-channel affine map, y = (x - mean) / sqrt(var + eps) * gamma
+ beta, so a convolution followed by it is one convolution with scaled weights and a shifted
bias. Folded, the network skips a full pass over each such activation: on a 2-core CPU in
channels_last, all T steps of mobilenet_v3_large-p96 ran 1.4x faster, digitnet 1.06-1.12x,
resnet50-p96 1.04-1.06x (bench/RESULTS.md, "CPU: inference in bf16 and channels_last"); the
logits move by float32 rounding only (tests/gfnet/test_precision.py).

A pair is folded only where the batch norm is certain to take the convolution's output and
nothing else does: consecutive children of an ``nn.Sequential`` (torchvision's
Conv2dNormActivation, downsample branches, digitnet's stem and shortcuts), and ``convK`` /
``bnK`` of the residual blocks ``_paired_blocks`` lists, whose forward applies
``bnK(convK(x))``. Only plain ``nn.BatchNorm2d`` folds (a subclass may do more, e.g. timm's
BatchNormAct2d also applies its activation). The folded batch norm becomes ``nn.Identity``:
its parameters leave the model, which is then for inference only (GFNet.set_inference_format
folds the models that gfnet.load, gfnet eval and the report load for themselves, never a model
handed to ``Predictor`` by its owner). fvcore counts the same MACs either way (batch norm is
not counted), so budgets and reports do not change.
"""

from __future__ import annotations

import re

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def _paired_blocks() -> tuple[type, ...]:
    from torchvision.models.resnet import BasicBlock, Bottleneck

    from .backbones import _Block

    return (BasicBlock, Bottleneck, _Block)


def _foldable(conv: nn.Module, bn: nn.Module | None) -> bool:
    return (isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and not bn.training
            and bn.track_running_stats and bn.running_mean is not None
            and bn.num_features == conv.out_channels)


def _gone(bn: nn.Module) -> nn.Module:
    """What takes a folded batch norm's place: an identity in the batch norm's (eval) mode, so
    that the engines, which never switch the modes of a model all in eval mode, still see one."""
    return nn.Identity().train(bn.training)


def fold_batch_norms(module: nn.Module) -> int:
    """Folds every foldable (convolution, batch norm) pair of ``module`` in place (module
    docstring); returns how many. The batch norms must be in eval mode."""
    folded = 0
    paired = _paired_blocks()
    for parent in list(module.modules()):
        children = parent._modules
        if isinstance(parent, nn.Sequential):
            names = list(children)
            for a, b in zip(names, names[1:]):
                if _foldable(children[a], children[b]):
                    children[a] = fuse_conv_bn_eval(children[a], children[b])
                    children[b] = _gone(children[b])
                    folded += 1
        if isinstance(parent, paired):
            for name in list(children):
                k = re.fullmatch(r"conv(\d+)", name)
                bn_name = f"bn{k.group(1)}" if k else None
                if k and _foldable(children[name], children.get(bn_name)):
                    children[name] = fuse_conv_bn_eval(children[name], children[bn_name])
                    children[bn_name] = _gone(children[bn_name])
                    folded += 1
    return folded


__all__ = ["fold_batch_norms"]
