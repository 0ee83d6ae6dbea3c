"""Every registered backbone: stage table vs. build, shapes, equivalence with torchvision."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from tunetl.models import apply_weights, build, list_backbones

EXPECTED = {
    "smallcnn": ["conv1", "conv2", "conv3", "conv4"],
    "resnet18": ["conv1", "layer1", "layer2", "layer3", "layer4"],
    "resnet50": ["conv1", "layer1", "layer2", "layer3", "layer4"],
    "vgg16": ["block1", "block2", "block3", "block4", "block5"],
    "alexnet": ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"],
    "mobilenet_v3_small": ["block1", "block2", "block3", "block4", "block5"],
    "efficientnet_b0": ["block1", "block2", "block3", "block4", "block5"],
}
FEATURE_DIMS = {
    "smallcnn": 128,
    "resnet18": 512,
    "resnet50": 2048,
    "vgg16": 512,
    "alexnet": 4096,
    "mobilenet_v3_small": 576,
    "efficientnet_b0": 1280,
}


def test_required_backbones_are_listed_with_their_stages() -> None:
    table = list_backbones()
    for name, stages in EXPECTED.items():
        assert table[name] == stages


@pytest.mark.parametrize("name", sorted(list_backbones()))
def test_built_stages_match_the_table(name: str) -> None:
    """Built on the meta device: no memory, no compute, so resnet50/vgg16 cost nothing."""
    with torch.device("meta"):
        model = build(name, 5)
        out = model(torch.zeros(2, 3, 224, 224))
    assert model.stage_names == list_backbones()[name]
    assert len(model.stages) == len(model.stage_names)
    assert tuple(out.shape) == (2, 5)
    assert not list(model.neck.parameters())
    if name in FEATURE_DIMS:
        assert model.feature_dim == FEATURE_DIMS[name]
    if name.startswith("efficientnet_lite"):  # Lite's own (x - 127) / 128 on 0..255
        assert model.mean == (127 / 255,) * 3 and model.std == (128 / 255,) * 3
    elif name != "smallcnn":
        assert model.input_size == 224
        assert model.mean == (0.485, 0.456, 0.406) and model.std == (0.229, 0.224, 0.225)
    for key in model.state_dict():
        assert key.startswith(("stages.", "head.")), key


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_small_inputs_work_for_resnet_and_mobilenet(name: str) -> None:
    model = build(name, 5, seed=0).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)


def test_block_stages_halve_the_resolution() -> None:
    model = build("mobilenet_v3_small", 5, seed=0).eval()
    x, sizes = torch.randn(1, 3, 64, 64), []
    with torch.no_grad():
        for i in range(model.num_stages):
            x = model.forward_stages(x, i, i + 1)
            sizes.append(x.shape[-1])
    assert sizes == [32, 16, 8, 4, 2]


def test_grayscale_input_replaces_the_first_conv() -> None:
    model = build("resnet18", 3, in_channels=1, seed=0).eval()
    assert model.stages[0].conv1.in_channels == 1
    assert len(model.mean) == len(model.std) == 1
    with torch.no_grad():
        assert model(torch.randn(2, 1, 64, 64)).shape == (2, 3)


def _without_classifier(name: str, net: nn.Module) -> nn.Module:
    if name == "resnet18":
        net.fc = nn.Identity()
    elif name == "alexnet":
        net.classifier[6] = nn.Identity()
    else:
        net.classifier = nn.Identity()
    return net


@pytest.mark.parametrize(
    ("name", "dropped", "size"),
    [
        ("resnet18", 2, 32),
        ("alexnet", 2, 64),
        ("mobilenet_v3_small", 4, 32),
        ("efficientnet_b0", 2, 32),
    ],
)
def test_staged_features_equal_torchvision_with_its_weights(
    name: str, dropped: int, size: int
) -> None:
    """A torchvision state dict maps key by key; the stages compute what torchvision computes."""
    torch.manual_seed(0)
    net = torchvision.models.get_model(name, weights=None)
    model = build(name, 5, seed=1)
    skipped = apply_weights(model, net.state_dict())
    assert len(skipped) == dropped
    reference = _without_classifier(name, net).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().features(x), reference(x))
