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
from typing import Any

import torch

from tunetl.config import ConfigError, ExperimentConfig
from tunetl.data import load_dataset
from tunetl.models import build
from tunetl.models.weights import load_state_file
from tunetl.params import TrialParams

#: Bump when source training changes in a way that changes its weights.
SOURCE_RECIPE_VERSION = 1
#: The training settings a source trained on `source.train_on` uses (the rest of `training` does not matter).
SOURCE_TRAINING_KEYS = ("batch_size", "optimizer", "base_lr", "momentum", "weight_decay", "augment", "image_size")


def default_cache_dir() -> Path:
    """`<storage>/cache` of the default `--storage` (./tunetl_runs): where `tunetl run` caches sources."""
    return Path.cwd() / "tunetl_runs" / "cache"


def source_recipe(experiment: ExperimentConfig, in_channels: int) -> dict[str, Any]:
    """Everything that determines the source weights, as JSON-ready data (recorded with the features)."""
    src = experiment.source
    body: dict[str, Any] = {"backbone": experiment.backbone, "in_channels": in_channels}
    if src.train_on is not None:
        body.update({
            "v": SOURCE_RECIPE_VERSION,
            "train_on": src.train_on.model_dump(mode="json"),
            "epochs": src.epochs,
            "seed": src.seed,
            "training": experiment.training.model_dump(mode="json", include=set(SOURCE_TRAINING_KEYS)),
        })
        body["training"].update(experiment.training.recipe_changes())  # the fine-tuning knobs, only where set
    elif src.weights is not None:
        body["weights"] = src.weights
    elif src.weights_file is not None:
        body["weights_file"] = Path(src.weights_file).name
    return body


def source_key(experiment: ExperimentConfig, in_channels: int) -> str:
    body = source_recipe(experiment, in_channels)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """A hash of a state dict's names, dtypes, shapes and values: the identity of a source's weights."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def source_file(experiment: ExperimentConfig, cache_dir: Path | str, in_channels: int) -> Path:
    """Where a source trained on `source.train_on` is cached: `<cache_dir>/sources/<backbone>-<key>.pt`."""
    # timm names hold a "/": one flat file name per backbone.
    flat = experiment.backbone.replace("/", "__")
    return Path(cache_dir) / "sources" / f"{flat}-{source_key(experiment, in_channels)}.pt"


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
    cache_dir: Path | str,
    *,
    in_channels: int | None = None,
    log: bool = True,
) -> Path:
    """Train the source model on `source.train_on` (all stages, from scratch) unless cached; return its path."""
    from tunetl.trial import TrialRunner, has_diverged, model_in_channels, torch_threads, trial_threads

    src = experiment.source
    if src.train_on is None:
        raise ValueError("train_source needs source.train_on in the experiment")
    target_channels = in_channels
    if target_channels is None:
        target_channels = model_in_channels(experiment, load_dataset(experiment.dataset))
    path = source_file(experiment, cache_dir, target_channels)
    cache = path.parent
    if path.exists():
        return path
    source_exp = experiment.model_copy(update={"dataset": src.train_on})
    if log:
        print(
            f"[tunetl] training the source model: {experiment.backbone} on {src.train_on.display_name()}, "
            f"{src.epochs} epochs, batch {experiment.training.batch_size} (once; cached as {path})",
            file=sys.stderr,
            flush=True,
        )
    runner = TrialRunner(
        TrialParams(transfer_depth=0),
        source_exp,
        seed=src.seed,
        in_channels=target_channels,
    )
    with torch_threads(trial_threads(experiment)):
        for epoch in range(1, src.epochs + 1):
            m = runner.run_epoch()
            if has_diverged(m.train_loss):
                raise ConfigError(
                    f"source.train_on: the source model diverged at epoch {m.epoch} (training loss "
                    f"{m.train_loss:.3g}) with training.base_lr={source_exp.training.base_lr:g}; lower "
                    "training.base_lr"
                )
            if log and (epoch % 5 == 0 or epoch == src.epochs):
                print(f"[tunetl] source model: epoch {epoch}/{src.epochs}, val_acc {m.val_acc:.3f}",
                      file=sys.stderr, flush=True)
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
    experiment: ExperimentConfig, cache_dir: Path | str, *, in_channels: int | None = None
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


def source_record(
    experiment: ExperimentConfig, in_channels: int, state: dict[str, torch.Tensor], storage: str
) -> dict[str, Any]:
    """What a search records about the source its `feature.*` values came from (a parent-run tag per
    source, then the meta-model): its name, recipe, cache key, weights hash and where it is cached."""
    record: dict[str, Any] = {
        "source": source_description(experiment),
        "backbone": experiment.backbone,
        "recipe": source_recipe(experiment, in_channels),
        "sha256": state_sha256(state),
    }
    if experiment.source.train_on is not None:
        record["key"] = source_key(experiment, in_channels)
        record["storage"] = storage
        record["file"] = source_file(experiment, "cache", in_channels).as_posix()
    return record
