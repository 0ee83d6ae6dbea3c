"""An eval-only copy of a backbone made faster for one forward pass over many images (`tunetl rank`).

Training never uses it: folding BatchNorm into the preceding convolution is only exact with frozen
running statistics. Channels-last memory lets oneDNN's convolutions (depthwise ones above all) skip
layout conversions; on a 2-core CPU the three changes together roughly halve Lite0's forward time.
"""

from __future__ import annotations

import torch
from torch import nn

from tunetl.models.lite import lite_for_inference
from tunetl.models.staged import StagedModel


@torch.no_grad()
def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Make `conv` compute bn(conv(x)) with `bn`'s running statistics (eval mode), in place."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1.0 / torch.sqrt(
        bn.running_var + bn.eps)
    shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight = nn.Parameter(conv.weight * scale.reshape(-1, 1, 1, 1), requires_grad=False)
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + shift, requires_grad=False)


def for_inference(model: StagedModel) -> StagedModel:
    """`model` in eval mode with every Conv2d -> BatchNorm2d pair of a Sequential folded (torchvision's
    conv-norm-activation blocks, Lite's stem and head; Lite's blocks through `lite_for_inference`) and in
    torchvision's ResNet blocks (`convI` -> `bnI`), and its memory channels-last; changed in place and
    returned. Feed it channels-last input too. Other BatchNorms (e.g. timm's) are left as they are."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    model.eval()
    for module in list(model.modules()):
        if isinstance(module, (BasicBlock, Bottleneck)):
            for i in (1, 2, 3):
                conv, bn = getattr(module, f"conv{i}", None), getattr(module, f"bn{i}", None)
                if isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.track_running_stats:
                    fold_batchnorm(conv, bn)
                    setattr(module, f"bn{i}", nn.Identity())
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (_, conv), (name, bn) in zip(children, children[1:], strict=False):
            # Exact type: timm's BatchNormAct2d subclasses BatchNorm2d but also applies its activation.
            if isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.track_running_stats:
                fold_batchnorm(conv, bn)
                setattr(module, name, nn.Identity())
    lite_for_inference(model)
    return model.to(memory_format=torch.channels_last)
