"""`smallcnn`: a 4-stage CNN that trains in seconds on CPU at the data's native size.

It is the backbone of the quickstart and the tests: 8x8 digits and 28x28 MNIST run without resizing
(`input_size=None`). Two max-pools only, so any input of at least 4x4 keeps a non-empty feature map;
the global average pool makes the feature width (128) independent of the input size.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

STAGE_NAMES: tuple[str, ...] = ("conv1", "conv2", "conv3", "conv4")
_WIDTHS: tuple[int, ...] = (32, 64, 64, 128)
_POOLED: tuple[bool, ...] = (False, True, True, False)
FEATURE_DIM = _WIDTHS[-1]


def _stage(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv=nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        bn=nn.BatchNorm2d(c_out),
        relu=nn.ReLU(inplace=True),
    )
    if pool:
        layers["pool"] = nn.MaxPool2d(2)
    return nn.Sequential(layers)


def smallcnn_parts(in_channels: int) -> tuple[list[tuple[str, nn.Module]], nn.Module, int]:
    """Stages (name, module), the neck and the feature width of a fresh smallcnn."""
    stages: list[tuple[str, nn.Module]] = []
    width = in_channels
    for name, c_out, pool in zip(STAGE_NAMES, _WIDTHS, _POOLED, strict=True):
        stages.append((name, _stage(width, c_out, pool)))
        width = c_out
    neck = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    return stages, neck, FEATURE_DIM
