"""Backbone registry: `build(name, num_classes, ...)` -> `StagedModel` with ordered stages, a
parameter-free neck and a replaceable head; safe weights loading."""

from tunetl.models.heads import ACTIVATIONS, HEAD_KINDS, make_head
from tunetl.models.registry import backbone_stages, build, list_backbones
from tunetl.models.staged import StagedModel, stage_index
from tunetl.models.weights import (
    WeightsError,
    adapt_first_conv,
    apply_weights,
    imagenet_state,
    load_state_file,
    stage_state,
)

__all__ = [
    "ACTIVATIONS",
    "HEAD_KINDS",
    "StagedModel",
    "WeightsError",
    "adapt_first_conv",
    "apply_weights",
    "backbone_stages",
    "build",
    "imagenet_state",
    "list_backbones",
    "load_state_file",
    "make_head",
    "stage_index",
    "stage_state",
]
