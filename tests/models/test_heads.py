"""Heads: layer structure, widths and activations of every kind."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tunetl.models import build, make_head


def test_linear_head_is_one_linear_layer() -> None:
    head = make_head("linear", 128, 5)
    assert isinstance(head, nn.Linear)
    assert (head.in_features, head.out_features) == (128, 5)


@pytest.mark.parametrize(("kind", "depth"), [("mlp1", 1), ("mlp2", 2), ("mlp3", 3)])
def test_mlp_heads_repeat_linear_activation_dropout(kind: str, depth: int) -> None:
    head = make_head(kind, 128, 5, activation="relu", hidden=64, dropout=0.3)
    layers = list(head)
    assert len(layers) == 3 * depth + 1
    for i in range(depth):
        linear, act, drop = layers[3 * i : 3 * i + 3]
        assert isinstance(linear, nn.Linear) and linear.out_features == 64
        assert linear.in_features == (128 if i == 0 else 64)
        assert isinstance(act, nn.ReLU)
        assert isinstance(drop, nn.Dropout) and drop.p == pytest.approx(0.3)
    assert isinstance(layers[-1], nn.Linear)
    assert (layers[-1].in_features, layers[-1].out_features) == (64, 5)


def test_gupta_head_is_mlp2_with_512_relu_dropout_03() -> None:
    head = make_head("mlp2", 256, 10)
    assert [type(m).__name__ for m in head] == [
        "Linear",
        "ReLU",
        "Dropout",
        "Linear",
        "ReLU",
        "Dropout",
        "Linear",
    ]
    assert head[0].out_features == 512 and head[3].out_features == 512
    assert head[2].p == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("name", "cls"), [("relu", nn.ReLU), ("elu", nn.ELU), ("sigmoid", nn.Sigmoid)]
)
def test_activation_choice(name: str, cls: type[nn.Module]) -> None:
    head = make_head("mlp2", 16, 3, activation=name, hidden=8)
    assert isinstance(head[1], cls) and isinstance(head[4], cls)
    assert head(torch.zeros(4, 16)).shape == (4, 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "mlp9"}, "head 'mlp9' is unknown"),
        ({"activation": "tanh"}, "activation 'tanh' is unknown"),
        ({"dropout": 1.0}, "dropout"),
        ({"hidden": 0}, "hidden"),
    ],
)
def test_invalid_head_arguments_are_named(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"kind": "mlp1", "in_features": 8, "num_classes": 2} | kwargs
    with pytest.raises(ValueError, match=message):
        make_head(**args)  # type: ignore[arg-type]


def test_build_places_the_head_on_the_neck() -> None:
    model = build("smallcnn", 4, in_channels=1, head="mlp2", activation="elu", hidden=32, seed=0)
    assert [k for k in model.state_dict() if k.startswith("head.")] == [
        "head.0.weight",
        "head.0.bias",
        "head.3.weight",
        "head.3.bias",
        "head.6.weight",
        "head.6.bias",
    ]
    assert model.head[0].in_features == model.feature_dim
    assert isinstance(model.head[1], nn.ELU)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 4)
