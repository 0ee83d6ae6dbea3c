"""Trial parameters: the search-space contract's keys, validated once.

Every search parameter a trial can receive lives here, so that the search layer, the trial runner,
MLflow logging and the analysis all agree on names, types and defaults.
"""

from __future__ import annotations

import math
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

#: Search-space keys, in the order they are shown in tables.
SEARCH_PARAMS: tuple[str, ...] = (
    "condition",
    "transfer_depth",
    "frozen_depth",
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


def no_bool(value: Any, annotation: Any) -> Any:
    """YAML's `true` is not a number: refuse it for numeric fields (pydantic would read it as 1)."""
    kinds = {annotation, *typing.get_args(annotation)}
    if isinstance(value, bool) and bool not in kinds and kinds & {int, float, tuple[float, ...]}:
        raise ValueError(f"expected a number, got {str(value).lower()}")
    return value


def needs_source(transfer_depth: int | None) -> bool:
    """The one "needs a source" rule: a trial transfers stages, and so needs source weights, unless its
    transfer_depth is 0; the default (None) transfers every stage (FTall)."""
    return transfer_depth is None or transfer_depth > 0


class TrialParams(BaseModel):
    """One trial's transfer recipe; `None` means "use the experiment's default".

    Learning rates follow DESIGN.md: stage i > frozen_depth trains at
    `inner_lr * stage_multipliers[i] * lr_scale`, the head at `last_lr * lr_scale`; `inner_lr` and
    `last_lr` default to `base_lr`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    condition: str | None = None
    transfer_depth: int | None = Field(default=None, ge=0)
    frozen_depth: int = Field(default=0, ge=0)
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

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool(cls, v: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        return no_bool(v, field.annotation if field else None)

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
    def _frozen_within_transferred(self) -> TrialParams:
        if self.transfer_depth is not None and self.frozen_depth > self.transfer_depth:
            raise ValueError(
                f"frozen_depth ({self.frozen_depth}) > transfer_depth ({self.transfer_depth}): "
                "only transferred stages can be frozen"
            )
        return self

    def resolved(self, num_stages: int, base_lr: float, augment: bool, optimizer: str) -> ResolvedParams:
        """Fill defaults for a backbone with `num_stages` stages and check lengths against it."""
        depth = num_stages if self.transfer_depth is None else self.transfer_depth
        if depth > num_stages:
            raise ValueError(f"transfer_depth={depth} but the backbone has {num_stages} stages")
        if self.frozen_depth > depth:
            raise ValueError(f"frozen_depth ({self.frozen_depth}) > transfer_depth ({depth})")
        mults = self.stage_multipliers if self.stage_multipliers is not None else (1.0,) * num_stages
        if len(mults) != num_stages:
            raise ValueError(
                f"stage_multipliers has {len(mults)} values but the backbone has {num_stages} stages"
            )
        base = self.base_lr if self.base_lr is not None else base_lr
        return ResolvedParams(
            condition=self.condition,
            transfer_depth=depth,
            frozen_depth=self.frozen_depth,
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
    transfer_depth: int
    frozen_depth: int
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
