"""The source a meta-model's features came from, found again for `tunetl features` and `predict`.

LogME, LEEP and the similarity are properties of a (source model, target) pair: a prediction is only
meaningful when the new dataset's features come from the source the training searches used. Every
search records, per source, its recipe (backbone, data, epochs, seed, training settings), its cache
key, a sha256 of its weights and its storage (`tunetl.source.<i>` parent tags, then the fitted
meta-model's `sources`). Here those records decide which weights to use:

- the source the searches used (same backbone and recipe): the cached file under the storage
  (`--storage`, else the one recorded), checked against the recorded hash, never retrained;
- another dataset as source: trained with the recorded recipe, cached in the same storage;
- anything else (another backbone, ImageNet or a file where the searches trained a source, a cached
  file with other weights, a missing cache): refused with a `SourceMismatch` naming what differs.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from tunetl.config import ConfigError, ExperimentConfig, SourceSpec, TrainingConfig
from tunetl.data import DatasetSpec, TaskData
from tunetl.models.weights import load_state_file
from tunetl.search.storage import Storage, StorageError
from tunetl.source import (
    source_description,
    source_file,
    source_key,
    source_recipe,
    source_state_for,
    state_sha256,
    train_source,
)
from tunetl.trial import model_in_channels

#: Parent-run tag prefix of the source records (`tunetl.source.0`, `tunetl.source.1`, ...).
SOURCE_TAG = "tunetl.source."
DEFAULT_BACKBONE = "smallcnn"


class SourceMismatch(ConfigError):
    """The source asked for is not the one the meta-model's features came from (or cannot be found)."""


@dataclass
class SourceUsed:
    """Which weights a set of features was computed with (printed by `predict`, in its JSON)."""

    source: str
    backbone: str
    sha256: str | None
    #: `recorded`: the searches' own source; `recipe`: another dataset trained with their recipe;
    #: `unchecked`: no records to compare with (a meta-model fitted before sources were recorded, or none).
    match: str
    path: str | None = None
    trained: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def source_tags(records: list[dict[str, Any]]) -> dict[str, str]:
    """Parent-run tags for a search's source records, one per distinct source."""
    unique = {json.dumps(r, sort_keys=True): r for r in records}
    return {f"{SOURCE_TAG}{i}": text for i, text in enumerate(unique)}


def records_from_tags(tags: dict[str, str]) -> list[dict[str, Any]]:
    return [json.loads(v) for k, v in sorted(tags.items()) if k.startswith(SOURCE_TAG)]


def _training_of(recipe: dict[str, Any]) -> dict[str, Any]:
    return {k: recipe[k] for k in ("epochs", "seed", "training", "v") if k in recipe}


def _storage(text: str | Path | None) -> Storage:
    try:
        return Storage(text if text else Path.cwd() / "tunetl_runs")
    except StorageError as err:
        raise ConfigError(f"--storage: {err}") from None


def _cached_state(storage: Storage, experiment: ExperimentConfig, channels: int) -> tuple[Path, bool]:
    """Local path of the source's cache file (pulled from an object store), and whether it exists."""
    cache = storage.cache_dir()
    storage.pull("cache/sources", cache / "sources")
    path = source_file(experiment, cache, channels)
    return path, path.exists()


def _train(storage: Storage, experiment: ExperimentConfig, channels: int) -> Path:
    cache = storage.cache_dir()
    storage.pull("cache/sources", cache / "sources")
    path = train_source(experiment, cache, in_channels=channels)
    storage.push(cache / "sources", "cache/sources")
    return path


def resolve_source(
    target: DatasetSpec,
    task: TaskData,
    source: SourceSpec,
    *,
    backbone: str | None = None,
    records: list[dict[str, Any]] | None = None,
    storage: str | Path | None = None,
) -> tuple[ExperimentConfig, dict[str, torch.Tensor] | None, SourceUsed | None]:
    """The experiment (backbone, source, training settings), source weights and their identity to
    compute `target`'s features with, consistent with `records` (a meta-model's sources)."""
    if not records:
        exp = ExperimentConfig(name="features", dataset=target, source=source,
                               backbone=backbone or DEFAULT_BACKBONE, search_space={})
        if source.kind == "none":
            return exp, None, None
        channels = model_in_channels(exp, task)
        cache = _storage(storage)
        if source.train_on is not None:
            path = _train(cache, exp, channels)
            state = load_state_file(path)
            return exp, state, SourceUsed(source_description(exp), exp.backbone, state_sha256(state),
                                          "unchecked", str(path))
        state = source_state_for(exp, cache.cache_dir(), in_channels=channels)
        assert state is not None
        return exp, state, SourceUsed(source_description(exp), exp.backbone, state_sha256(state), "unchecked")

    backbones = sorted({r["backbone"] for r in records})
    if backbone is None:
        if len(backbones) > 1:
            raise SourceMismatch(f"--backbone: the meta-model's features came from sources on {', '.join(backbones)}; "
                                 "name the one to use")
        backbone = backbones[0]
    elif backbone not in backbones:
        raise SourceMismatch(
            f"--backbone {backbone}: the meta-model's features came from {', '.join(backbones)} sources "
            f"({_names(records)}); features from another backbone are not comparable: use --backbone {backbones[0]}")
    mine = [r for r in records if r["backbone"] == backbone]
    kinds = {_kind(r["recipe"]) for r in mine}
    if source.kind == "none":
        raise SourceMismatch(f"--source: the meta-model's features came from a source ({_names(mine)}); "
                             f"give --source (e.g. {_example(mine[0])})")
    if source.kind not in kinds:
        raise SourceMismatch(
            f"--source: {_kind_text(source.kind)} differs from the meta-model's sources, {_kind_text(*kinds)} "
            f"({_names(mine)}); use such a source")
    if source.train_on is None:
        return _given_weights(target, task, source, backbone, mine)

    settings = Counter(json.dumps(_training_of(r["recipe"]), sort_keys=True) for r in mine)
    recipe = json.loads(settings.most_common(1)[0][0])
    exact = [r for r in mine if r["recipe"].get("train_on") == source.train_on.model_dump(mode="json")]
    if exact:
        recipe = _training_of(exact[0]["recipe"])
    training = TrainingConfig(**recipe.get("training", {}))
    exp = ExperimentConfig(
        name="features", dataset=target, backbone=backbone, search_space={}, training=training,
        source=SourceSpec(train_on=source.train_on, epochs=recipe["epochs"], seed=recipe["seed"]),
    )
    channels = model_in_channels(exp, task)
    if not exact:
        where = _storage(storage or mine[0].get("storage"))
        path, cached = _cached_state(where, exp, channels)
        if not cached:
            print(f"[tunetl] {source.train_on.display_name()} is not a source the meta-model learned from: "
                  f"training it with their recipe ({_recipe_text(recipe)})", flush=True, file=sys.stderr)
            path = _train(where, exp, channels)
        state = load_state_file(path)
        return exp, state, SourceUsed(source_description(exp), backbone, state_sha256(state), "recipe",
                                      str(path), trained=not cached)

    record = exact[0]
    if record["recipe"].get("in_channels") != channels:
        raise SourceMismatch(
            f"--dataset: the source {record['source']} was trained for {record['recipe'].get('in_channels')}-channel "
            f"input, the dataset has {channels} channel(s)")
    key = source_key(exp, channels)
    if key != record.get("key"):
        raise SourceMismatch(
            f"--source {record['source']}: this tunetl's recipe key {key} differs from the recorded "
            f"{record.get('key')} (source training changed since the searches ran): refit on new searches")
    where = _storage(storage or record.get("storage"))
    path, cached = _cached_state(where, exp, channels)
    if not cached:
        raise SourceMismatch(
            f"--source {record['source']}: the source the meta-model's searches used ({record['file']}, "
            f"weights sha256 {record['sha256'][:12]}) is not under {where.display()}; pass --storage with "
            "the --storage those searches ran with")
    state = load_state_file(path)
    digest = state_sha256(state)
    if digest != record["sha256"]:
        raise SourceMismatch(
            f"--source {record['source']}: the cached source {path} has weights sha256 {digest[:12]}, the "
            f"meta-model's searches used {record['sha256'][:12]}; pass --storage with the searches' own storage")
    return exp, state, SourceUsed(record["source"], backbone, digest, "recorded", str(path))


def _given_weights(target: DatasetSpec, task: TaskData, source: SourceSpec, backbone: str,
                   mine: list[dict[str, Any]]) -> tuple[ExperimentConfig, dict[str, torch.Tensor], SourceUsed]:
    """ImageNet weights or a file: the same weights as a record (by recipe), checked by hash."""
    exp = ExperimentConfig(name="features", dataset=target, source=source, backbone=backbone, search_space={})
    channels = model_in_channels(exp, task)
    state = source_state_for(exp, Path(), in_channels=channels)
    assert state is not None
    digest = state_sha256(state)
    recipe = source_recipe(exp, channels)
    same = [r for r in mine if r["recipe"] == recipe]
    if same and source.weights is not None and same[0]["sha256"] != digest:
        raise SourceMismatch(
            f"--source imagenet: these {backbone} ImageNet weights have sha256 {digest[:12]}, the meta-model's "
            f"searches used {same[0]['sha256'][:12]} (another torchvision weights version)")
    matched = [r for r in mine if r["sha256"] == digest]
    return exp, state, SourceUsed(source_description(exp), backbone, digest, "recorded" if matched else "recipe")


def _kind(recipe: dict[str, Any]) -> str:
    if "train_on" in recipe:
        return "train_on"
    return "imagenet" if recipe.get("weights") == "imagenet" else "weights_file"


def _kind_text(*kinds: str) -> str:
    text = {"train_on": "a source model trained on a dataset", "imagenet": "ImageNet weights",
            "weights_file": "a weights file", "none": "no source"}
    return " / ".join(text[k] for k in sorted(kinds))


def _names(records: list[dict[str, Any]]) -> str:
    names = sorted({r["source"] for r in records})
    return ", ".join(names[:4]) + (f", ... ({len(names)} sources)" if len(names) > 4 else "")


def _example(record: dict[str, Any]) -> str:
    kind, train_on = _kind(record["recipe"]), record["recipe"].get("train_on") or {}
    if kind == "train_on":
        return f'"builtin:{record["source"]}"' if train_on.get("builtin") else str(train_on.get("path"))
    return "imagenet" if kind == "imagenet" else "WEIGHTS.pt"


def _recipe_text(recipe: dict[str, Any]) -> str:
    training = recipe.get("training", {})
    return (f"{recipe['epochs']} epochs, seed {recipe['seed']}, batch {training.get('batch_size')}, "
            f"{training.get('optimizer')} lr {training.get('base_lr')}")
