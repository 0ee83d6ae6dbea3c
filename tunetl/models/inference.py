"""An eval-only copy of a backbone made faster for one forward pass over many images (`tunetl rank`).

Training never uses it: folding BatchNorm into the preceding convolution is only exact with frozen
running statistics. Channels-last memory lets oneDNN's convolutions (depthwise ones above all) skip
layout conversions; on a 2-core CPU the three changes together roughly halve Lite0's forward time.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

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


def lite_for_inference(model: nn.Module) -> None:
    """Fold each Lite block's eval BatchNorms into its convolutions and give stride-1 convolutions their
    (symmetric) "same" padding inside the convolution, in place, for a model that will only run in eval
    mode (`tunetl rank`). Why: on a CPU the separate BatchNorm passes and the padded copies of every
    feature map cost a third of Lite's forward time; the outputs are the same to float round-off.
    A no-op when `efficientnet-lite-pytorch` was never imported (then no Lite module exists)."""
    lib = sys.modules.get("efficientnet_lite_pytorch")
    if lib is None:
        return
    block_type = lib.model.MBConvBlock
    same_type = lib.utils.Conv2dDynamicSamePadding
    for module in model.modules():
        if isinstance(module, block_type):
            for conv, bn in (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")):
                if hasattr(module, conv) and isinstance(getattr(module, bn, None), nn.BatchNorm2d):
                    fold_batchnorm(getattr(module, conv), getattr(module, bn))
                    setattr(module, bn, nn.Identity())
        for name, child in list(module.named_children()):
            if type(child) is same_type and tuple(child.stride) == (1, 1) and all(k % 2 for k in child.kernel_size):
                padding = tuple((k - 1) * d // 2 for k, d in zip(child.kernel_size, child.dilation, strict=True))
                conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, 1, padding,
                                 child.dilation, child.groups, child.bias is not None)
                conv.weight, conv.bias = child.weight, child.bias
                setattr(module, name, conv)


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
