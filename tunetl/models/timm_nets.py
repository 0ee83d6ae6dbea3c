"""timm models as `StagedModel`s: `backbone: timm/<name>` (e.g. `timm/resnet18.a1_in1k`).

Stages come from timm's own structure:
- CNNs (ResNet, EfficientNet, MobileNetV3, ConvNeXt, RegNet, ...): `feature_info` names the module at
  the end of each resolution stage; the modules `forward_features` runs (the model's children up to its
  pooling/classifier, with `blocks`/`stages` containers expanded) are cut after each of them. Stage names
  are those modules' names (`layer1`, `blocks_4`, `stages_0`; `stem` for a first stage that is not a
  container item).
- Vision transformers (`patch_embed` + `blocks`): `embed` (patch embedding, class token, position
  embedding) then the blocks in `VIT_GROUPS` groups of consecutive blocks (`blocks0_2`, ...). They are
  built with `dynamic_img_size=True` so that inputs smaller than the pretrained size work.
The last stage also holds whatever `forward_features` runs after the last feature module and timm's
`forward_head(pre_logits=True)` (global pool, ConvNeXt's head norm, MobileNetV3's 1x1 head conv), so it
outputs pooled features and the neck is the identity. timm's classifier is removed (`num_classes=0`).

A split that does not reproduce timm's own `forward_head(forward_features(x), pre_logits=True)` is refused
(checked once per model name on a small random input), so a model whose forward is not a plain chain of
its children fails loudly instead of training something else.

Input size, mean/std and interpolation come from the model's `pretrained_cfg`. Weights: `imagenet` is
`timm.create_model(pretrained=True)`: from the Hugging Face cache with `HF_HUB_OFFLINE=1` when the file is
already there (no network call), else downloaded; a weights file in timm's own layout (a state dict or
`.safetensors`) is loaded by timm itself (`pretrained_cfg_overlay=dict(file=...)`), which also adapts
the first convolution to other channel counts.
"""

from __future__ import annotations

import functools
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

PREFIX = "timm/"
#: Block groups of a vision transformer (plus the `embed` stage).
VIT_GROUPS = 4
_HEAD_CHILDREN = ("global_pool", "head", "fc", "classifier")
_ENV_LOCK = threading.Lock()


class TimmBackboneError(ValueError):
    """A timm name that does not exist or whose structure tunetl cannot cut into stages."""


def is_timm(name: str) -> bool:
    return name.startswith(PREFIX)


def timm_name(backbone: str) -> str:
    return backbone.removeprefix(PREFIX)


@dataclass
class TimmParts:
    stages: list[tuple[str, nn.Module]]
    neck: nn.Module
    feature_dim: int
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    source: nn.Module
    #: timm's pretrained classifier (`weight`, `bias`) when it was asked for and is a Linear layer.
    classifier: dict[str, torch.Tensor] | None = None


class _Chain(nn.Module):
    """Runs named modules in order (timm names contain dots, which `nn.Sequential` keys cannot)."""

    def __init__(self, parts: list[tuple[str, nn.Module]]) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(OrderedDict((n.replace(".", "_"), m) for n, m in parts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.parts.values():
            x = module(x)
        return x


class _Tail(nn.Module):
    """The last stage's end: the rest of `forward_features`, then timm's `forward_head(pre_logits=True)`.

    It registers the head's modules (so their parameters belong to this stage) and keeps the timm model
    itself unregistered, only to call its `forward_head`.
    """

    def __init__(self, model: nn.Module, features: list[tuple[str, nn.Module]], head: list[tuple[str, nn.Module]]):
        super().__init__()
        self.features = _Chain(features)
        self.head_parts = nn.ModuleDict(OrderedDict((n, m) for n, m in head))
        object.__setattr__(self, "_timm", model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._timm.forward_head(self.features(x), pre_logits=True)  # type: ignore[operator]


class _VitEmbed(nn.Module):
    """Patch embedding, class/register tokens and position embedding of a timm ViT (its parameters)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_timm", model)
        for name in ("patch_embed", "pos_drop", "patch_drop", "norm_pre"):
            if hasattr(model, name):
                self.add_module(name, getattr(model, name))
        for name in ("cls_token", "reg_token", "pos_embed"):
            value = getattr(model, name, None)
            if isinstance(value, nn.Parameter):
                self.register_parameter(name, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self._timm
        x = m.patch_embed(x)  # type: ignore[operator]
        x = m._pos_embed(x)  # type: ignore[operator]
        x = m.patch_drop(x)  # type: ignore[operator]
        return m.norm_pre(x)  # type: ignore[operator]


@contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Set `HF_HUB_OFFLINE=1` for the call when the weights are cached: timm then makes no network call."""
    if not offline:
        yield
        return
    with _ENV_LOCK:
        saved = os.environ.get("HF_HUB_OFFLINE")
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = saved


def _is_vit(model: nn.Module) -> bool:
    return hasattr(model, "patch_embed") and hasattr(model, "blocks") and hasattr(model, "_pos_embed")


def _create(name: str, *, in_channels: int, pretrained: bool = False, file: str | None = None,
            meta: bool = False, keep_classifier: bool = False) -> nn.Module:
    import timm

    if not timm.is_model(name.split(".")[0]):
        raise TimmBackboneError(
            f"backbone {PREFIX}{name}: timm has no model {name.split('.')[0]!r}; list them with "
            "python -c \"import timm; print(timm.list_models('resnet*'))\""
        )
    kwargs: dict[str, Any] = {"in_chans": in_channels}
    if not keep_classifier:
        kwargs["num_classes"] = 0
    arch = timm.models.get_arch_name(name) if hasattr(timm.models, "get_arch_name") else name.split(".")[0]
    if arch.startswith(("vit_", "deit_", "eva", "beit")):
        kwargs["dynamic_img_size"] = True
    if file is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": file}
    offline = pretrained and file is None and _cached(name)
    if meta:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False, **kwargs)
    with _hub_offline(offline):
        return timm.create_model(name, pretrained=pretrained, **kwargs)


def _cached(name: str) -> bool:
    """Whether timm's pretrained weights for `name` are already in the Hugging Face cache."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name) if hasattr(timm.models, "get_pretrained_cfg") else None
    if cfg is None or not getattr(cfg, "hf_hub_id", None):
        return False
    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(cfg.hf_hub_id, filename), str):
            return True
    return False


def _split_cnn(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], nn.Module]:
    feature_modules = [f["module"] for f in model.feature_info]  # type: ignore[union-attr]
    containers = {m.split(".")[0] for m in feature_modules if "." in m}
    path: list[tuple[str, nn.Module]] = []
    head: list[tuple[str, nn.Module]] = []
    for child_name, child in model.named_children():
        if head or child_name in _HEAD_CHILDREN:
            head.append((child_name, child))
        elif child_name in containers:
            path += [(f"{child_name}.{n}", m) for n, m in child.named_children()]
        else:
            path.append((child_name, child))
    names = [n for n, _ in path]
    missing = [m for m in feature_modules if m not in names]
    if missing:
        raise TimmBackboneError(f"feature modules {missing} are not on the model's forward path {names}")
    stages: list[tuple[str, nn.Module]] = []
    start = 0
    for i, feature in enumerate(feature_modules):
        stop = names.index(feature) + 1
        parts = path[start:stop]
        if i == len(feature_modules) - 1:
            module: nn.Module = _Tail(model, parts + path[stop:], head)
        else:
            module = _Chain(parts)
        stage_name = "stem" if i == 0 and "." not in feature else feature.replace(".", "_")
        stages.append((stage_name, module))
        start = stop
    return stages, nn.Identity()


def _split_vit(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], nn.Module]:
    blocks = list(model.blocks.named_children())  # type: ignore[union-attr]
    groups = min(VIT_GROUPS, len(blocks))
    bounds = [i * len(blocks) // groups for i in range(groups + 1)]
    stages: list[tuple[str, nn.Module]] = [("embed", _VitEmbed(model))]
    head = [(n, m) for n, m in model.named_children() if n in ("fc_norm", "head_drop", "head", "attn_pool")]
    for g in range(groups):
        part = [(f"blocks.{n}", m) for n, m in blocks[bounds[g] : bounds[g + 1]]]
        name = f"blocks{bounds[g]}_{bounds[g + 1] - 1}"
        if g == groups - 1:
            stages.append((name, _Tail(model, part + [("norm", model.norm)], head)))
        else:
            stages.append((name, _Chain(part)))
    return stages, nn.Identity()


def _split(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], nn.Module]:
    if _is_vit(model):
        return _split_vit(model)
    if getattr(model, "feature_info", None):
        return _split_cnn(model)
    raise TimmBackboneError(
        f"timm model {type(model).__name__} has neither feature_info nor a ViT structure: tunetl cannot cut "
        "it into stages"
    )


def _image_size(cfg: dict[str, Any]) -> int:
    size = cfg.get("input_size") or (3, 224, 224)
    return int(size[-1])


def timm_parts(backbone: str, in_channels: int, *, pretrained: bool = False, file: str | None = None) -> TimmParts:
    """Build timm's model (random init, its pretrained weights, or a file in timm's layout) in stages."""
    name = timm_name(backbone)
    keep = pretrained and file is None
    model = _create(name, in_channels=in_channels, pretrained=pretrained, file=file, keep_classifier=keep)
    classifier = None
    if keep:
        found = model.get_classifier()
        if isinstance(found, nn.Linear):
            classifier = {"weight": found.weight.detach().clone(), "bias": found.bias.detach().clone()}
        model.reset_classifier(0)
    stages, neck = _split(model)
    _check_split(backbone, model, stages)
    cfg = dict(model.pretrained_cfg)
    dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
    return TimmParts(
        stages=stages,
        neck=neck,
        feature_dim=dim,
        input_size=_image_size(cfg),
        mean=tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))),
        interpolation=str(cfg.get("interpolation", "bilinear")),
        source=model,
        classifier=classifier,
    )


@functools.cache
def timm_stage_names(backbone: str) -> tuple[str, ...]:
    """Stage names of a timm backbone, from a model built on the meta device (no memory, no weights)."""
    model = _create(timm_name(backbone), in_channels=3, meta=True)
    return tuple(n for n, _ in _split(model)[0])


_CHECKED: set[str] = set()


def _check_split(backbone: str, model: nn.Module, stages: list[tuple[str, nn.Module]]) -> None:
    """Once per name: the stages must compute what timm computes."""
    if backbone in _CHECKED:
        return
    size = 64 if not _is_vit(model) else 32
    channels = _in_chans(model)
    was_training = model.training
    model.eval()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        x = torch.randn(2, channels, size, size)
        want = model.forward_head(model.forward_features(x), pre_logits=True)
        got = x
        for _, stage in stages:
            got = stage(got)
    model.train(was_training)
    if got.shape != want.shape or not torch.allclose(got, want, atol=1e-4, rtol=1e-3):
        raise TimmBackboneError(
            f"backbone {backbone}: its stages do not reproduce timm's forward (the model's forward is not "
            "a plain chain of its children); choose another timm model"
        )
    _CHECKED.add(backbone)


def _in_chans(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return 3

