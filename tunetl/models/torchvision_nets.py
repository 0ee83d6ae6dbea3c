"""torchvision classifiers cut into stages.

Each torchvision model is built as torchvision defines it and its own modules are regrouped into
stages, so pretrained weights keep their meaning and `torchvision_key_map` can translate a
torchvision state dict key by key. torchvision is imported inside the functions: importing it costs
seconds and `smallcnn` users never need it.

Stages per family (stage `blockN` works at 1/2**N of the input resolution):
- resnet: `conv1` (conv1+bn1+relu+maxpool), `layer1`..`layer4`; neck avgpool+flatten.
- vgg: `block1`..`block5`, the conv blocks split after each MaxPool; neck global average pool.
- alexnet: `conv1`..`conv5` (each conv with its ReLU and following MaxPool), then `fc6`, `fc7`
  (avgpool+flatten open fc6, each fc is Dropout+Linear+ReLU); the head replaces fc8, the neck is
  the identity.
- mobilenet / efficientnet: `features` grouped at each resolution drop into `block1`..`block5`;
  neck global average pool. Their ImageNet classifier (MobileNetV3's 576->1024 pre-logits included)
  is dropped: the head starts from the pooled features.

`input_size` is 224 (ImageNet); resnet, mobilenet and efficientnet also run at 64x64 or smaller
(alexnet down to 63x63), which is what the tests and CPU runs use.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
IMAGENET_INPUT_SIZE = 224

_RESNET = ("conv1", "layer1", "layer2", "layer3", "layer4")
_BLOCKS = ("block1", "block2", "block3", "block4", "block5")
_ALEXNET = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")

#: backbone name -> (family, stage names)
TORCHVISION_BACKBONES: dict[str, tuple[str, tuple[str, ...]]] = {
    "resnet18": ("resnet", _RESNET),
    "resnet34": ("resnet", _RESNET),
    "resnet50": ("resnet", _RESNET),
    "vgg11": ("vgg", _BLOCKS),
    "vgg16": ("vgg", _BLOCKS),
    "vgg19": ("vgg", _BLOCKS),
    "alexnet": ("alexnet", _ALEXNET),
    "mobilenet_v3_small": ("by_resolution", _BLOCKS),
    "mobilenet_v3_large": ("by_resolution", _BLOCKS),
    "efficientnet_b0": ("by_resolution", _BLOCKS),
}

#: dotted path of the first convolution inside each family's torchvision model
_FIRST_CONV = {
    "resnet": "conv1",
    "vgg": "features.0",
    "alexnet": "features.0",
    "by_resolution": "features.0.0",
}


@dataclass
class TorchvisionParts:
    """A torchvision model regrouped: its stages, the neck and the feature width. `source` is the
    original model (sharing the modules), kept only to build the key map."""

    stages: list[tuple[str, nn.Module]]
    neck: nn.Module
    feature_dim: int
    source: nn.Module


def imagenet_url(name: str) -> str:
    """URL of torchvision's default ImageNet weights for a backbone."""
    from torchvision.models import get_model_weights

    return str(get_model_weights(name).DEFAULT.url)


def torchvision_parts(name: str, in_channels: int) -> TorchvisionParts:
    """Build torchvision's `name` with random init and cut it into stages.

    With `in_channels != 3` the first convolution is replaced by one with that many input channels
    (Kaiming-normal init); ImageNet weights are adapted to it when they are applied (see
    `tunetl.models.weights.adapt_first_conv`).
    """
    from torchvision.models import get_model

    family, names = TORCHVISION_BACKBONES[name]
    net = get_model(name, weights=None)
    if in_channels != 3:
        _replace_first_conv(net, _FIRST_CONV[family], in_channels)
    split = {"resnet": _split_resnet, "vgg": _split_vgg, "alexnet": _split_alexnet}.get(
        family, _split_by_resolution
    )
    modules, neck, feature_dim = split(net)
    if len(modules) != len(names):
        raise RuntimeError(
            f"{name}: split into {len(modules)} stages, the table names {len(names)}"
        )
    return TorchvisionParts(list(zip(names, modules, strict=True)), neck, feature_dim, net)


def torchvision_key_map(source: nn.Module, staged: nn.Module) -> dict[str, str | None]:
    """torchvision state-dict key -> staged key, matched by tensor identity (the modules are
    shared); None for torchvision tensors the staged model dropped (its ImageNet classifier)."""
    staged_keys = {id(t): key for key, t in staged.state_dict(keep_vars=True).items()}
    return {key: staged_keys.get(id(t)) for key, t in source.state_dict(keep_vars=True).items()}


def _replace_first_conv(net: nn.Module, path: str, in_channels: int) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = net.get_submodule(parent_path) if parent_path else net
    old = parent.get_submodule(attr)
    if not isinstance(old, nn.Conv2d):
        raise RuntimeError(f"expected a Conv2d at {path}, found {type(old).__name__}")
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        kernel_size=old.kernel_size,  # type: ignore[arg-type]
        stride=old.stride,  # type: ignore[arg-type]
        padding=old.padding,  # type: ignore[arg-type]
        dilation=old.dilation,  # type: ignore[arg-type]
        groups=old.groups,
        bias=old.bias is not None,
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    setattr(parent, attr, new)


def _global_pool() -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


def _split_resnet(net: nn.Module) -> tuple[list[nn.Module], nn.Module, int]:
    stem = nn.Sequential(
        OrderedDict(conv1=net.conv1, bn1=net.bn1, relu=net.relu, maxpool=net.maxpool)
    )
    layers = [stem, net.layer1, net.layer2, net.layer3, net.layer4]
    return layers, nn.Sequential(net.avgpool, nn.Flatten(1)), int(net.fc.in_features)


def _split_vgg(net: nn.Module) -> tuple[list[nn.Module], nn.Module, int]:
    """Blocks end at each MaxPool. The neck is a global average pool (512 features) instead of
    torchvision's 7x7 pool + flatten (25,088 features): a new head on 25,088 inputs would be the
    bulk of the model's parameters for a small target task, and global pooling makes the features
    independent of the input size, so VGG also runs below 224x224."""
    blocks = _split_after(net.features, lambda i: isinstance(net.features[i], nn.MaxPool2d))
    width = [m for m in net.features if isinstance(m, nn.Conv2d)][-1].out_channels
    return blocks, _global_pool(), int(width)


def _split_alexnet(net: nn.Module) -> tuple[list[nn.Module], nn.Module, int]:
    features = list(net.features)

    def ends_stage(i: int) -> bool:
        nxt = features[i + 1] if i + 1 < len(features) else None
        return isinstance(features[i], nn.MaxPool2d) or (
            isinstance(features[i], nn.ReLU) and not isinstance(nxt, nn.MaxPool2d)
        )

    convs = _split_after(net.features, ends_stage)
    cls = net.classifier
    fc6 = nn.Sequential(
        OrderedDict(
            avgpool=net.avgpool, flatten=nn.Flatten(1), dropout=cls[0], fc=cls[1], relu=cls[2]
        )
    )
    fc7 = nn.Sequential(OrderedDict(dropout=cls[3], fc=cls[4], relu=cls[5]))
    return [*convs, fc6, fc7], nn.Identity(), int(cls[4].out_features)


def _split_by_resolution(net: nn.Module) -> tuple[list[nn.Module], nn.Module, int]:
    """Start a new stage at every `features` module that contains a strided convolution."""
    features = list(net.features)

    def downsamples(m: nn.Module) -> bool:
        return any(isinstance(c, nn.Conv2d) and max(c.stride) > 1 for c in m.modules())

    def ends_stage(i: int) -> bool:
        return i + 1 == len(features) or downsamples(features[i + 1])

    blocks = _split_after(net.features, ends_stage)
    linear = next(m for m in net.classifier.modules() if isinstance(m, nn.Linear))
    return blocks, _global_pool(), int(linear.in_features)


def _split_after(seq: nn.Sequential, ends: Callable[[int], bool]) -> list[nn.Module]:
    """Cut a Sequential into consecutive slices, each ending at a child index where `ends(i)`.
    Slices keep the original child names, so keys stay traceable to torchvision."""
    out: list[nn.Module] = []
    start = 0
    for i in range(len(seq)):
        if ends(i):
            out.append(seq[start : i + 1])
            start = i + 1
    if start < len(seq):
        out.append(seq[start:])
    return out
