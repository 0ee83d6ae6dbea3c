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
    "weight_decay",
    "lr_schedule",
    "warmup_epochs",
    "label_smoothing",
    "mixup",
    "cutmix",
    "layer_decay",
    "grad_clip",
)

#: Values of `augment`: no augmentation, random crop + flip (`true`, the seeds' preset), and
#: torchvision's TrivialAugmentWide and RandAugment. `false`/`true` stay accepted as none/crop_flip.
AUGMENT_POLICIES: tuple[str, ...] = ("none", "crop_flip", "trivial", "randaugment")
AugmentPolicy = Literal["none", "crop_flip", "trivial", "randaugment"]
LrSchedule = Literal["constant", "cosine", "step"]

#: Defaults of the fine-tuning knobs when neither the trial nor `training` sets them.
RECIPE_DEFAULTS: dict[str, Any] = {
    "weight_decay": 0.0,
    "lr_schedule": "constant",
    "warmup_epochs": 0,
    "label_smoothing": 0.0,
    "mixup": 0.0,
    "cutmix": 0.0,
    "layer_decay": None,
    "grad_clip": 0.0,
}


def augment_policy(value: Any) -> Any:
    """`true`/`false` (the original boolean `augment`) -> `crop_flip`/`none`; other values unchanged."""
    if isinstance(value, bool):
        return "crop_flip" if value else "none"
    return value


def exclusive_multipliers_error(multipliers_from: str, decay_from: str) -> str:
    """The one message for a trial given both per-stage multipliers and a layer-wise decay."""
    return (
        f"stage_multipliers ({multipliers_from}) and layer_decay ({decay_from}) are mutually exclusive: "
        "give per-stage multipliers or a layer-wise decay, not both"
    )


#: Learning-rate parameters: compared on a log scale.
LR_PARAMS: tuple[str, ...] = ("base_lr", "inner_lr", "last_lr", "lr_scale")


def param_distance(key: str, a: Any, b: Any) -> float:
    """How far apart two values of a parameter are: decades for learning rates (0, i.e. frozen, counts
    as 1e-9), plain difference for other numbers, 0 or 1 (same or not) for names and lists; 0 when
    either is unknown."""
    if a is None or b is None:
        return 0.0
    if key in LR_PARAMS:
        la = math.log10(a) if a > 0 else -9.0
        lb = math.log10(b) if b > 0 else -9.0
        return abs(la - lb)
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return 0.0 if a == b else 1.0  # named choices (augment, lr_schedule) and lists: same or not
    return abs(float(a) - float(b))


def no_bool(value: Any, annotation: Any) -> Any:
    """YAML's `true` is not a number: refuse it for numeric fields (pydantic would read it as 1)."""
    kinds = {annotation, *typing.get_args(annotation)}
    if isinstance(value, bool) and bool not in kinds and kinds & {int, float, tuple[float, ...]}:
        raise ValueError(f"expected a number, got {str(value).lower()}")
    return value


def as_tuples(value: Any) -> Any:
    """JSON lists -> tuples, recursively, so that a configuration read back from text stays hashable."""
    if isinstance(value, list):
        return tuple(as_tuples(v) for v in value)
    return value


def needs_source(transfer_depth: int | None) -> bool:
    """The one "needs a source" rule: a trial transfers stages, and so needs source weights, unless its
    transfer_depth is 0; the default (None) transfers every stage (FTall)."""
    return transfer_depth is None or transfer_depth > 0


def depth_from_fraction(fraction: float, num_stages: int) -> int:
    """A depth given as a fraction of the backbone's stages: `fraction * num_stages` rounded half up,
    so 0.5 of 5 stages is 3 and 0.5 of 4 is 2; 0 and 1 are always none and all stages."""
    return int(math.floor(fraction * num_stages + 0.5))


class TrialParams(BaseModel):
    """One trial's transfer recipe; `None` means "use the experiment's default".

    Learning rates follow DESIGN.md: stage i > frozen_depth trains at
    `inner_lr * stage_multipliers[i] * lr_scale`, the head at `last_lr * lr_scale`; `inner_lr` and
    `last_lr` default to `base_lr`. `layer_decay` replaces the multipliers by `layer_decay ** (L - i)`
    (the two are mutually exclusive), and `lr_schedule`/`warmup_epochs` scale every rate per epoch.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

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
    augment: AugmentPolicy | None = None
    optimizer: Literal["sgd", "adam", "rmsprop"] | None = None
    weight_decay: float | None = Field(default=None, ge=0)
    lr_schedule: LrSchedule | None = None
    warmup_epochs: int | None = Field(default=None, ge=0)
    label_smoothing: float | None = Field(default=None, ge=0, lt=1)
    mixup: float | None = Field(default=None, ge=0)
    cutmix: float | None = Field(default=None, ge=0)
    layer_decay: float | None = Field(default=None, gt=0, le=1)
    grad_clip: float | None = Field(default=None, ge=0)

    @field_validator("augment", mode="before")
    @classmethod
    def _augment_policy(cls, v: Any) -> Any:
        return augment_policy(v)

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
        if self.stage_multipliers is not None and self.layer_decay is not None:
            raise ValueError(exclusive_multipliers_error(str(list(self.stage_multipliers)), f"{self.layer_decay:g}"))
        return self

    def resolved(
        self, num_stages: int, base_lr: float, augment: bool | str, optimizer: str, **defaults: Any
    ) -> ResolvedParams:
        """Fill defaults for a backbone with `num_stages` stages and check lengths against it.

        `defaults` holds the experiment's values of the fine-tuning knobs (`RECIPE_DEFAULTS`' keys,
        e.g. `training.weight_decay`); a knob the trial leaves unset takes that value.
        """
        unknown = set(defaults) - set(RECIPE_DEFAULTS)
        if unknown:
            raise TypeError(f"unknown recipe default(s) {sorted(unknown)}")
        recipe = {
            k: getattr(self, k) if getattr(self, k) is not None else defaults.get(k, RECIPE_DEFAULTS[k])
            for k in RECIPE_DEFAULTS
        }
        if self.stage_multipliers is not None and recipe["layer_decay"] is not None:
            raise ValueError(
                exclusive_multipliers_error(str(list(self.stage_multipliers)), "training.layer_decay")
            )
        td, frozen = self.depths(num_stages)
        depth = num_stages if td is None else td
        if depth > num_stages:
            raise ValueError(f"transfer_depth={depth} but the backbone has {num_stages} stages")
        if frozen > depth:
            raise ValueError(f"frozen_depth ({frozen}) > transfer_depth ({depth})")
        mults = self.stage_multipliers if self.stage_multipliers is not None else (1.0,) * num_stages
        if recipe["layer_decay"] is not None:
            mults = layer_decay_multipliers(recipe["layer_decay"], num_stages)
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
            augment=augment_policy(augment) if self.augment is None else self.augment,
            optimizer=optimizer if self.optimizer is None else self.optimizer,
            **recipe,
        )


def layer_decay_multipliers(decay: float, num_stages: int) -> tuple[float, ...]:
    """timm-style layer-wise decay: stage i of L (1-based) gets `decay ** (L - i)`, the last stage 1."""
    return tuple(float(decay ** (num_stages - i)) for i in range(1, num_stages + 1))


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
    augment: AugmentPolicy
    optimizer: Literal["sgd", "adam", "rmsprop"]
    weight_decay: float
    lr_schedule: LrSchedule
    warmup_epochs: int
    label_smoothing: float
    mixup: float
    cutmix: float
    #: The decay the stage multipliers were computed from; None when they were given (or all 1).
    layer_decay: float | None
    grad_clip: float

    def stage_lrs(self) -> list[float]:
        """Learning rate of each stage; 0 for the frozen prefix."""
        return [
            0.0 if i < self.frozen_depth else self.inner_lr * m * self.lr_scale
            for i, m in enumerate(self.stage_multipliers)
        ]

    def head_lr(self) -> float:
        return self.last_lr * self.lr_scale
