"""`StagedModel`: a backbone cut into ordered stages, a parameter-free neck and a replaceable head.

Transfer learning in tunetl is expressed per stage (copy stages 1..n, freeze 1..d, a learning rate
per stage), so every backbone is put into this one shape. State-dict keys are `stages.<i>.` and
`head.` prefixed (the neck has no parameters), which makes "copy the first n stages" a key-prefix
operation. Stage indices in code are 0-based like `nn.ModuleList`: DESIGN's stages 1..d are
`range(0, d)`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from tunetl.models.heads import make_head


class StagedModel(nn.Module):
    """A classifier `head(neck(S_L(...S_1(x))))` with named, ordered stages."""

    def __init__(
        self,
        name: str,
        stages: Sequence[tuple[str, nn.Module]],
        neck: nn.Module,
        feature_dim: int,
        num_classes: int,
        *,
        in_channels: int,
        input_size: int | None,
        mean: Sequence[float],
        std: Sequence[float],
        head: str = "linear",
        activation: str = "relu",
        hidden: int = 512,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        if not stages:
            raise ValueError(f"backbone {name!r} needs at least one stage")
        if any(True for _ in neck.parameters()):
            raise ValueError(f"backbone {name!r}: the neck must be parameter-free (pool/flatten)")
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(
                f"backbone {name!r}: mean/std need {in_channels} values, got {len(mean)}/{len(std)}"
            )
        self.name = name
        self.stage_names: list[str] = [stage_name for stage_name, _ in stages]
        self.stages = nn.ModuleList([module for _, module in stages])
        self.neck = neck
        self.feature_dim = feature_dim
        self.in_channels = in_channels
        self.input_size = input_size
        #: How inputs are resized to `input_size` ("bilinear"; timm models say theirs, e.g. "bicubic").
        self.interpolation = "bilinear"
        self.mean: tuple[float, ...] = tuple(float(v) for v in mean)
        self.std: tuple[float, ...] = tuple(float(v) for v in std)
        #: torchvision state-dict key -> staged key (None: torchvision's own classifier, dropped).
        #: Empty for backbones that are not from torchvision.
        self.torchvision_keys: dict[str, str | None] = {}
        self._frozen_stages: frozenset[int] = frozenset()
        self.num_classes = num_classes
        self.head_kind = head
        self.head = make_head(head, feature_dim, num_classes, activation, hidden, dropout)

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def frozen_stages(self) -> frozenset[int]:
        """0-based indices of stages kept in eval mode (BatchNorm statistics and Dropout frozen)
        even under `train()`. Assign a new set; it takes effect at once."""
        return self._frozen_stages

    @frozen_stages.setter
    def frozen_stages(self, indices: Iterable[int]) -> None:
        chosen = frozenset(int(i) for i in indices)
        bad = sorted(i for i in chosen if not 0 <= i < len(self.stages))
        if bad:
            raise ValueError(
                f"frozen_stages {bad} out of range for {self.name!r}, which has stages "
                f"0..{len(self.stages) - 1} ({', '.join(self.stage_names)})"
            )
        self._frozen_stages = chosen
        self.train(self.training)

    def train(self, mode: bool = True) -> StagedModel:
        """Set train/eval mode, keeping frozen stages in eval mode so that their BatchNorm running
        statistics do not drift while the rest of the network trains."""
        super().train(mode)
        for index in self._frozen_stages:
            self.stages[index].train(False)
        return self

    def forward_stages(
        self, x: torch.Tensor, start: int = 0, stop: int | None = None
    ) -> torch.Tensor:
        """Run `stages[start:stop]`; lets the engine run a frozen prefix under `no_grad`."""
        for stage in self.stages[start:stop]:
            x = stage(x)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Neck output after all stages: the (B, feature_dim) features used by LogME/LEEP."""
        return self.neck(self.forward_stages(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def extra_repr(self) -> str:
        return f"name={self.name!r}, stages={self.stage_names}, feature_dim={self.feature_dim}"


def stage_index(key: str) -> int | None:
    """0-based stage of a state-dict key (`stages.<i>.`); None when it is not a stage's key."""
    parts = key.split(".", 2)
    if len(parts) >= 3 and parts[0] == "stages" and parts[1].isdigit():
        return int(parts[1])
    return None
