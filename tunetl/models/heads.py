"""Classification heads placed after a backbone's neck.

The seeds vary the head as a search parameter (a linear probe, or Gupta's 512-ReLU-Dropout 0.3
twice = `mlp2`), so every kind is built here from the same few arguments.
"""

from __future__ import annotations

from torch import nn

HEAD_KINDS: dict[str, int] = {"linear": 0, "mlp1": 1, "mlp2": 2, "mlp3": 3}
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "elu": nn.ELU, "sigmoid": nn.Sigmoid}


def make_head(
    kind: str,
    in_features: int,
    num_classes: int,
    activation: str = "relu",
    hidden: int = 512,
    dropout: float = 0.3,
) -> nn.Module:
    """Build a head: `linear` is one `nn.Linear`; `mlpN` is N x (Linear -> activation -> Dropout)
    of width `hidden`, then the Linear classifier, as one `nn.Sequential`."""
    if kind not in HEAD_KINDS:
        raise ValueError(f"head {kind!r} is unknown; choose one of {sorted(HEAD_KINDS)}")
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"activation {activation!r} is unknown; choose one of {sorted(ACTIVATIONS)}"
        )
    if in_features < 1 or num_classes < 1:
        raise ValueError(
            f"head needs in_features >= 1 and num_classes >= 1, got {in_features} and {num_classes}"
        )
    depth = HEAD_KINDS[kind]
    if depth == 0:
        return nn.Linear(in_features, num_classes)
    if hidden < 1:
        raise ValueError(f"head {kind!r} needs hidden >= 1, got {hidden}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"head dropout must be in [0, 1), got {dropout}")
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), ACTIVATIONS[activation](), nn.Dropout(dropout)]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
