"""`for_inference`: BatchNorm folded into the convolutions and channels-last memory give the same features."""

from __future__ import annotations

import pytest
import torch

from tunetl.models import build
from tunetl.models.inference import for_inference


def _randomise_bn(model: torch.nn.Module) -> None:
    """Non-trivial running statistics and affine parameters, so that a wrong fold changes the output."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18"])
def test_folded_channels_last_copy_computes_the_same_features(backbone: str) -> None:
    model = build(backbone, num_classes=10, in_channels=3, seed=0)
    _randomise_bn(model)
    model.eval()
    x = torch.randn(4, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = model.features(x)
    fast = for_inference(model)
    bns = [m for m in fast.modules() if type(m) is torch.nn.BatchNorm2d]
    assert not bns, f"{len(bns)} BatchNorm2d left unfolded in {backbone}"
    with torch.inference_mode():
        got = fast.features(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
