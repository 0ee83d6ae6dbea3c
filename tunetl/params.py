"""Trial parameters: the search-space contract's keys, validated once.

Every search parameter a trial can receive lives here, so that the search layer, the trial runner,
MLflow logging and the analysis all agree on names, types and defaults.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: Search-space keys, in the order they are shown in tables.
SEARCH_PARAMS: tuple[str, ...] = (
    "condition",
    "backbone",
    "transfer_depth",
    "frozen_depth",
    "transfer_fraction",
    "frozen_fraction",
    "images_per_label",
    "base_lr",
    "inner_lr",
    "last_lr",
    "stage_multipliers",
    "lr_scale",
    "head",
    "activation",
    "augment",
    "optimizer",
)


#: Learning-rate parameters: compared on a log scale.
LR_PARAMS: tuple[str, ...] = ("base_lr", "inner_lr", "last_lr", "lr_scale")


def param_distance(key: str, a: float | None, b: float | None) -> float:
    """How far apart two values of a parameter are: decades for learning rates (0, i.e. frozen, counts
    as 1e-9), plain difference otherwise; 0 when either is unknown."""
    if a is None or b is None:
        return 0.0
    if key in LR_PARAMS:
        la = math.log10(a) if a > 0 else -9.0
        lb = math.log10(b) if b > 0 else -9.0
        return abs(la - lb)
    return abs(float(a) - float(b))


def depth_from_fraction(fraction: float, num_stages: int) -> int:
    """A depth given as a fraction of the backbone's stages: `fraction * num_stages` rounded half up,
    so 0.5 of 5 stages is 3 and 0.5 of 4 is 2; 0 and 1 are always none and all stages."""
    return int(math.floor(fraction * num_stages + 0.5))


class TrialParams(BaseModel):
    """One trial's transfer recipe; `None` means "use the experiment's default".

    Learning rates follow DESIGN.md: stage i > frozen_depth trains at
    `inner_lr * stage_multipliers[i] * lr_scale`, the head at `last_lr * lr_scale`; `inner_lr` and
    `last_lr` default to `base_lr`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    condition: str | None = None
    #: The trial's backbone when the search space varies it; None = the experiment's `backbone`.
    backbone: str | None = None
    transfer_depth: int | None = Field(default=None, ge=0)
    frozen_depth: int = Field(default=0, ge=0)
    #: Depths as a fraction of the backbone's stages (carry across backbones of different depth);
    #: each excludes its integer counterpart.
    transfer_fraction: float | None = Field(default=None, ge=0, le=1)
    frozen_fraction: float | None = Field(default=None, ge=0, le=1)
    images_per_label: int | Literal["all"] = "all"
    base_lr: float | None = Field(default=None, ge=0)
    inner_lr: float | None = Field(default=None, ge=0)
    last_lr: float | None = Field(default=None, ge=0)
    stage_multipliers: tuple[float, ...] | None = None
    lr_scale: float = Field(default=1.0, ge=0)
    head: Literal["linear", "mlp1", "mlp2", "mlp3"] = "linear"
    activation: Literal["relu", "elu", "sigmoid"] = "relu"
    augment: bool | None = None
    optimizer: Literal["sgd", "adam", "rmsprop"] | None = None

    @field_validator("images_per_label")
    @classmethod
    def _positive_ipl(cls, v: int | str) -> int | str:
        if v != "all" and int(v) < 1:
            raise ValueError("images_per_label must be a positive integer or 'all'")
        return v

    @field_validator("stage_multipliers")
    @classmethod
    def _non_negative(cls, v: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if v is not None and any(m < 0 for m in v):
            raise ValueError("stage_multipliers must be >= 0")
        return v

    @model_validator(mode="after")
    def _depth_or_fraction(self) -> TrialParams:
        if self.transfer_fraction is not None and self.transfer_depth is not None:
            raise ValueError("give transfer_depth or transfer_fraction, not both")
        if self.frozen_fraction is not None and "frozen_depth" in self.model_fields_set:
            raise ValueError("give frozen_depth or frozen_fraction, not both")
        if (
            self.transfer_fraction is not None
            and self.frozen_fraction is not None
            and self.frozen_fraction > self.transfer_fraction
        ):
            raise ValueError(
                f"frozen_fraction ({self.frozen_fraction}) > transfer_fraction ({self.transfer_fraction}): "
                "only transferred stages can be frozen"
            )
        return self

    def depths(self, num_stages: int) -> tuple[int | None, int]:
        """(transfer_depth, frozen_depth) on a backbone of `num_stages` stages, fractions rounded."""
        td = self.transfer_depth
        if self.transfer_fraction is not None:
            td = depth_from_fraction(self.transfer_fraction, num_stages)
        fd = self.frozen_depth
        if self.frozen_fraction is not None:
            fd = depth_from_fraction(self.frozen_fraction, num_stages)
        return td, fd

    @model_validator(mode="after")
    def _frozen_within_transferred(self) -> TrialParams:
        if self.transfer_depth is not None and self.frozen_depth > self.transfer_depth:
            raise ValueError(
                f"frozen_depth ({self.frozen_depth}) > transfer_depth ({self.transfer_depth}): "
                "only transferred stages can be frozen"
            )
        return self

    def resolved(self, num_stages: int, base_lr: float, augment: bool, optimizer: str) -> ResolvedParams:
        """Fill defaults for a backbone with `num_stages` stages and check lengths against it."""
        td, frozen = self.depths(num_stages)
        depth = num_stages if td is None else td
        if depth > num_stages:
            raise ValueError(f"transfer_depth={depth} but the backbone has {num_stages} stages")
        if frozen > depth:
            raise ValueError(f"frozen_depth ({frozen}) > transfer_depth ({depth})")
        mults = self.stage_multipliers if self.stage_multipliers is not None else (1.0,) * num_stages
        if len(mults) != num_stages:
            raise ValueError(
                f"stage_multipliers has {len(mults)} values but the backbone has {num_stages} stages"
            )
        base = self.base_lr if self.base_lr is not None else base_lr
        return ResolvedParams(
            condition=self.condition,
            backbone=self.backbone,
            transfer_depth=depth,
            frozen_depth=frozen,
            transfer_fraction=self.transfer_fraction,
            frozen_fraction=self.frozen_fraction,
            images_per_label=self.images_per_label,
            base_lr=base,
            inner_lr=self.inner_lr if self.inner_lr is not None else base,
            last_lr=self.last_lr if self.last_lr is not None else base,
            stage_multipliers=tuple(float(m) for m in mults),
            lr_scale=self.lr_scale,
            head=self.head,
            activation=self.activation,
            augment=augment if self.augment is None else self.augment,
            optimizer=optimizer if self.optimizer is None else self.optimizer,
        )


class ResolvedParams(BaseModel):
    """TrialParams with every default filled in for one backbone: what a trial actually runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    condition: str | None
    backbone: str | None = None
    transfer_depth: int
    frozen_depth: int
    transfer_fraction: float | None = None
    frozen_fraction: float | None = None
    images_per_label: int | Literal["all"]
    base_lr: float
    inner_lr: float
    last_lr: float
    stage_multipliers: tuple[float, ...]
    lr_scale: float
    head: Literal["linear", "mlp1", "mlp2", "mlp3"]
    activation: Literal["relu", "elu", "sigmoid"]
    augment: bool
    optimizer: Literal["sgd", "adam", "rmsprop"]

    def stage_lrs(self) -> list[float]:
        """Learning rate of each stage; 0 for the frozen prefix."""
        return [
            0.0 if i < self.frozen_depth else self.inner_lr * m * self.lr_scale
            for i, m in enumerate(self.stage_multipliers)
        ]

    def head_lr(self) -> float:
        return self.last_lr * self.lr_scale
