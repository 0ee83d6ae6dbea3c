"""The backbone registry: names -> `StagedModel` builders, and the stage table for validation.

`list_backbones` answers from a static table, so the search layer can check `stage_multipliers`
lengths without building (or importing) any network; the tests check that the table matches what
`build` produces.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from tunetl.models import smallcnn
from tunetl.models.staged import StagedModel
from tunetl.models.torchvision_nets import (
    IMAGENET_INPUT_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TORCHVISION_BACKBONES,
    torchvision_key_map,
    torchvision_parts,
)
from tunetl.models.weights import WeightsError, apply_weights, imagenet_state, load_state_file

_STAGE_TABLE: dict[str, tuple[str, ...]] = {
    "smallcnn": smallcnn.STAGE_NAMES,
    **{name: names for name, (_, names) in TORCHVISION_BACKBONES.items()},
}


def list_backbones() -> dict[str, list[str]]:
    """Backbone name -> its stage names, in order."""
    return {name: list(names) for name, names in _STAGE_TABLE.items()}


@contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Seed the initialisation without disturbing the caller's global RNG stream."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _stats(values: tuple[float, ...], in_channels: int) -> tuple[float, ...]:
    """Normalisation statistics for `in_channels`: the RGB values, or their mean per channel."""
    if in_channels == len(values):
        return values
    return (sum(values) / len(values),) * in_channels


def build(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    weights: str | os.PathLike[str] | None = None,
    head: str = "linear",
    activation: str = "relu",
    hidden: int = 512,
    dropout: float = 0.3,
    seed: int | None = None,
) -> StagedModel:
    """Build backbone `name` with a fresh head for `num_classes`.

    `weights`: None (random init, seeded by `seed`), "imagenet" (torchvision's pretrained weights;
    needs the network or the torch hub cache), or a path to a state dict (staged or torchvision
    layout). A head in the file that does not fit `num_classes` is skipped.
    """
    if name not in _STAGE_TABLE:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(_STAGE_TABLE)}")
    if num_classes < 1 or in_channels < 1:
        raise ValueError(
            f"build({name!r}) needs num_classes >= 1 and in_channels >= 1, "
            f"got {num_classes} and {in_channels}"
        )
    imagenet = weights is not None and str(weights) == "imagenet"
    if imagenet and name not in TORCHVISION_BACKBONES:
        raise WeightsError(
            f"backbone {name!r} has no ImageNet weights; use weights_file or a source task"
        )
    state = (
        imagenet_state(name) if imagenet else None
    )  # fetched first: offline fails before building
    with _seeded(seed):
        if name == "smallcnn":
            stages, neck, width = smallcnn.smallcnn_parts(in_channels)
            source, input_size, mean, std = None, None, (0.5,) * in_channels, (0.5,) * in_channels
        else:
            parts = torchvision_parts(name, in_channels)
            stages, neck, width, source = parts.stages, parts.neck, parts.feature_dim, parts.source
            input_size = IMAGENET_INPUT_SIZE
            mean, std = _stats(IMAGENET_MEAN, in_channels), _stats(IMAGENET_STD, in_channels)
        model = StagedModel(
            name,
            stages,
            neck,
            width,
            num_classes,
            in_channels=in_channels,
            input_size=input_size,
            mean=mean,
            std=std,
            head=head,
            activation=activation,
            hidden=hidden,
            dropout=dropout,
        )
    if source is not None:
        model.torchvision_keys = torchvision_key_map(source, model)
    if tuple(model.stage_names) != _STAGE_TABLE[name]:
        raise RuntimeError(
            f"{name}: built stages {model.stage_names} differ from the table {_STAGE_TABLE[name]}"
        )
    if state is not None:
        apply_weights(model, state, source=f"torchvision's ImageNet weights for {name}")
    elif weights is not None:
        apply_weights(model, load_state_file(weights), source=f"weights file {weights}")
    return model
