"""Transfer recipes: which stages come from the source, which are frozen, and each stage's learning rate.

One formula covers every seed (DESIGN.md): stages 1..transfer_depth take the source weights, the rest
keep a fresh initialisation; the frozen prefix and every stage whose learning rate is 0 get no updates
and keep BatchNorm in eval mode; the others train at `inner_lr * multiplier * lr_scale`, the head at
`last_lr * lr_scale`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tunetl.models import StagedModel, build
from tunetl.models.weights import WeightsError
from tunetl.params import ResolvedParams, needs_source


@dataclass
class PreparedModel:
    model: StagedModel
    #: Optimizer parameter groups; frozen and zero-LR parameters never appear here.
    param_groups: list[dict[str, Any]]
    #: Leading stages that are frozen: the engine runs them without autograd (and may cache them).
    frozen_prefix: int


def copy_stages(model: StagedModel, source_state: dict[str, torch.Tensor], depth: int) -> None:
    """Load stages 0..depth-1 of `source_state` into `model` exactly (weights and BatchNorm buffers)."""
    own = model.state_dict()
    prefixes = tuple(f"stages.{i}." for i in range(depth))
    wanted = [k for k in own if k.startswith(prefixes)]
    missing = [k for k in wanted if k not in source_state]
    if missing:
        raise WeightsError(
            f"source weights lack {len(missing)} key(s) of stages 1..{depth}: {missing[:10]}"
        )
    mismatched = [k for k in wanted if source_state[k].shape != own[k].shape]
    if mismatched:
        shapes = [f"{k}: {tuple(source_state[k].shape)} vs {tuple(own[k].shape)}" for k in mismatched[:10]]
        raise WeightsError(f"source weights do not fit this backbone's stages: {shapes}")
    with torch.no_grad():
        for k in wanted:
            own[k].copy_(source_state[k])


def freeze_stages(model: StagedModel, frozen: set[int]) -> None:
    """Freeze stages: no gradients, and BatchNorm/Dropout stay in eval mode through `model.train()`."""
    model.frozen_stages = set(frozen)
    for i, stage in enumerate(model.stages):
        for p in stage.parameters():
            p.requires_grad_(i not in frozen)
    model.train(model.training)


def param_groups(model: StagedModel, params: ResolvedParams) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for i, (stage, lr) in enumerate(zip(model.stages, params.stage_lrs(), strict=True)):
        trainable = [p for p in stage.parameters() if p.requires_grad]
        if lr > 0 and trainable:
            groups.append({"params": trainable, "lr": lr, "name": model.stage_names[i]})
    head = [p for p in model.head.parameters() if p.requires_grad]
    if params.head_lr() > 0 and head:
        groups.append({"params": head, "lr": params.head_lr(), "name": "head"})
    return groups


def prepare_model(
    backbone: str,
    num_classes: int,
    in_channels: int,
    params: ResolvedParams,
    source_state: dict[str, torch.Tensor] | None,
    *,
    seed: int,
    hidden: int = 512,
    dropout: float = 0.3,
) -> PreparedModel:
    """Build the target model of one trial from its resolved parameters."""
    model = build(
        backbone,
        num_classes=num_classes,
        in_channels=in_channels,
        weights=None,
        head=params.head,
        activation=params.activation,
        hidden=hidden,
        dropout=dropout,
        seed=seed,
    )
    if needs_source(params.transfer_depth):
        if source_state is None:
            raise ValueError(
                f"transfer_depth={params.transfer_depth} needs source weights: set source.train_on, "
                "source.weights or source.weights_file in the experiment (or use transfer_depth: 0)"
            )
        copy_stages(model, source_state, params.transfer_depth)
    frozen = {i for i, lr in enumerate(params.stage_lrs()) if lr == 0}
    freeze_stages(model, frozen)
    if params.head_lr() == 0:
        for p in model.head.parameters():
            p.requires_grad_(False)
    groups = param_groups(model, params)
    if not groups:
        raise ValueError("every learning rate is 0: nothing would train (check inner_lr, last_lr, lr_scale)")
    prefix = 0
    while prefix < len(model.stages) and prefix in frozen:
        prefix += 1
    return PreparedModel(model=model, param_groups=groups, frozen_prefix=prefix)


def make_optimizer(
    name: str, groups: list[dict[str, Any]], *, momentum: float = 0.9, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """SGD with momentum, Adam or RMSprop over the per-stage groups (each group carries its own lr)."""
    lr0 = groups[0]["lr"]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr0, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr0, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr0, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}: use sgd, adam or rmsprop")
