"""Source weights for transfer: trained here once and cached, torchvision's ImageNet weights, or a file.

A source trained on `source.train_on` is the Yosinski/Soekhoe protocol (disjoint source and target
classes). Training it is the most expensive step a search shares, so its state dict is cached on disk
under a key of everything that determines it, and every trial (on any node that sees the cache folder)
reuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

from tunetl.config import ExperimentConfig
from tunetl.data import load_dataset
from tunetl.models import build
from tunetl.models.weights import load_state_file
from tunetl.params import TrialParams

#: Bump when source training changes in a way that changes its weights.
SOURCE_RECIPE_VERSION = 1
DEFAULT_CACHE = Path(".tunetl_cache")


def source_key(experiment: ExperimentConfig, in_channels: int) -> str:
    src, tr = experiment.source, experiment.training
    body = {
        "v": SOURCE_RECIPE_VERSION,
        "backbone": experiment.backbone,
        "train_on": src.train_on.model_dump() if src.train_on else None,
        "epochs": src.epochs,
        "seed": src.seed,
        "in_channels": in_channels,
        "training": tr.model_dump(include={"batch_size", "optimizer", "base_lr", "momentum", "weight_decay",
                                           "augment", "image_size"}),
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def source_description(experiment: ExperimentConfig) -> str:
    """What the transferred weights are, as recorded in MLflow (`source` param)."""
    src = experiment.source
    if src.train_on is not None:
        return src.train_on.display_name()
    if src.weights is not None:
        return src.weights
    if src.weights_file is not None:
        return Path(src.weights_file).name
    return "none"


def train_source(
    experiment: ExperimentConfig,
    cache_dir: Path | str = DEFAULT_CACHE,
    *,
    in_channels: int | None = None,
    log: bool = True,
) -> Path:
    """Train the source model on `source.train_on` (all stages, from scratch) unless cached; return its path."""
    from tunetl.trial import TrialRunner, model_in_channels

    src = experiment.source
    if src.train_on is None:
        raise ValueError("train_source needs source.train_on in the experiment")
    target_channels = in_channels
    if target_channels is None:
        target_channels = model_in_channels(experiment, load_dataset(experiment.dataset))
    cache = Path(cache_dir) / "sources"
    # timm names hold a "/": one flat file name per backbone.
    path = cache / f"{experiment.backbone.replace('/', '__')}-{source_key(experiment, target_channels)}.pt"
    if path.exists():
        return path
    source_exp = experiment.model_copy(update={"dataset": src.train_on})
    runner = TrialRunner(
        TrialParams(transfer_depth=0),
        source_exp,
        seed=src.seed,
        in_channels=target_channels,
    )
    for _ in range(src.epochs):
        m = runner.run_epoch()
    if log:
        print(
            f"[tunetl] source model: {experiment.backbone} on {runner.task.name}, {src.epochs} epochs, "
            f"val_acc {m.val_acc:.3f} -> {path}",
            file=sys.stderr,
            flush=True,
        )
    cache.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in runner.model.state_dict().items()}
    # Write then rename: concurrent trials never read a half-written file.
    fd, tmp = tempfile.mkstemp(dir=cache, suffix=".tmp")
    os.close(fd)
    torch.save(state, tmp)
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(
        json.dumps({"dataset": runner.task.name, "val_acc": m.val_acc, "epochs": src.epochs}, indent=2)
    )
    return path


def source_state_for(
    experiment: ExperimentConfig, cache_dir: Path | str = DEFAULT_CACHE, *, in_channels: int | None = None
) -> dict[str, torch.Tensor] | None:
    """The state dict whose stages trials copy, or None when the experiment has no source.

    Files and ImageNet weights go through `build(weights=...)`, which maps torchvision layouts onto
    the stages, adapts the first convolution to the data's channels and names any key that does not fit.
    """
    from tunetl.trial import model_in_channels

    src = experiment.source
    if src.kind == "none":
        return None
    if in_channels is None:
        in_channels = model_in_channels(experiment, load_dataset(experiment.dataset))
    if src.train_on is not None:
        return load_state_file(train_source(experiment, cache_dir, in_channels=in_channels))
    weights = src.weights_file if src.weights_file is not None else "imagenet"
    classes = head_classes(load_state_file(weights)) if src.weights_file is not None else 1000
    model = build(experiment.backbone, num_classes=classes, in_channels=in_channels, weights=weights)
    return {k: v.detach() for k, v in model.state_dict().items()}


def head_classes(state: dict[str, torch.Tensor]) -> int:
    """Classes of the source's own head (so LEEP can use it); 1 when the file has no tunetl head."""
    heads = [k for k, v in state.items() if k.startswith("head.") and k.endswith("weight") and v.ndim == 2]
    return int(state[heads[-1]].shape[0]) if heads else 1
