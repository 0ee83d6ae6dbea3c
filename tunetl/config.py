"""Experiment YAML -> validated `ExperimentConfig`, parsed once with errors that name the key.

The search space (a file path or an inline mapping) is read here too, so that `--set` can reach into it
and every problem surfaces before Ray starts or an MLflow run exists.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunetl.data.spec import DatasetSpec


class ConfigError(ValueError):
    """Invalid experiment or search-space input; the message names the file and the key path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceSpec(_Strict):
    """Where transferred weights come from: a source model trained here, torchvision's, or a file."""

    train_on: DatasetSpec | None = None
    epochs: int = Field(default=15, ge=1)
    seed: int = 0
    weights: Literal["imagenet"] | None = None
    weights_file: str | None = None

    @model_validator(mode="after")
    def _at_most_one(self) -> SourceSpec:
        given = [k for k in ("train_on", "weights", "weights_file") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give only one of train_on, weights, weights_file (got {', '.join(given)})")
        return self

    @property
    def kind(self) -> str:
        if self.train_on is not None:
            return "train_on"
        if self.weights is not None:
            return "imagenet"
        if self.weights_file is not None:
            return "weights_file"
        return "none"


class TrainingConfig(_Strict):
    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=64, ge=1)
    eval_batch_size: int = Field(default=512, ge=1)
    optimizer: Literal["sgd", "adam", "rmsprop"] = "sgd"
    base_lr: float = Field(default=0.01, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    augment: bool = False
    image_size: int | None = Field(default=None, ge=8)
    hidden: int = Field(default=512, ge=1)
    dropout: float = Field(default=0.3, ge=0, lt=1)
    #: Seconds between trial checkpoints (and always after the last epoch); 0 = every epoch.
    checkpoint_interval_s: float = Field(default=30.0, ge=0)
    #: Frozen-prefix outputs: shared by the trials of a node ("node"), per trial ("trial"), or recomputed
    #: every epoch ("off"). Trials that augment always run their training inputs through the prefix.
    feature_cache: Literal["node", "trial", "off"] = "node"
    #: Mixed precision: "auto" = bfloat16 autocast on a GPU that supports it, float32 on CPU;
    #: "bf16" forces it (also on CPU), "off" never.
    amp: Literal["auto", "bf16", "off"] = "auto"


class SchedulerConfig(_Strict):
    type: Literal["asha", "none"] = "asha"
    grace_period: int = Field(default=2, ge=1)
    reduction_factor: float = Field(default=3, gt=1)
    #: ASHA compares trials only within groups of equal values of these parameters.
    group_by: list[str] = Field(default_factory=lambda: ["images_per_label"])

    @field_validator("group_by")
    @classmethod
    def _known_params(cls, v: list[str]) -> list[str]:
        from tunetl.params import SEARCH_PARAMS

        unknown = [k for k in v if k not in SEARCH_PARAMS]
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown}; choose from {', '.join(SEARCH_PARAMS)}")
        return v


class SearcherConfig(_Strict):
    type: Literal["grid", "optuna"] = "grid"
    num_samples: int = Field(default=1, ge=1)
    seed: int = 0
    warm_start: str | None = None
    #: Keep only the k backbones of the space's `backbone` axis that score best zero-shot (`prune_by`,
    #: computed with each backbone's source weights on the target before any trial).
    prune_backbones: int | None = Field(default=None, ge=1)
    prune_by: Literal["logme", "leep"] = "logme"


class ResourcesConfig(_Strict):
    cpu: float = Field(default=1, gt=0)
    gpu: float = Field(default=0, ge=0)


class TaskSpec(_Strict):
    """One transfer task of a multi-task experiment: a target dataset and where its weights come from."""

    dataset: DatasetSpec
    source: SourceSpec | None = None


class ExperimentConfig(_Strict):
    name: str = Field(min_length=1)
    dataset: DatasetSpec | None = None
    #: Several target tasks swept in one search (meta-learning data); replaces `dataset`.
    tasks: list[TaskSpec] | None = Field(default=None, min_length=1)
    source: SourceSpec = SourceSpec()
    backbone: str = "smallcnn"
    search_space: dict[str, Any]
    training: TrainingConfig = TrainingConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    searcher: SearcherConfig = SearcherConfig()
    resources: ResourcesConfig = ResourcesConfig()
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    max_failures: int = Field(default=0, ge=0)
    #: Where the search space came from (a file path or "inline"); informational.
    search_space_file: str | None = None
    #: Where the experiment came from; relative paths in it are resolved against its folder.
    source_file: str | None = None

    @model_validator(mode="after")
    def _dataset_or_tasks(self) -> ExperimentConfig:
        if (self.dataset is None) == (self.tasks is None):
            raise ValueError("give exactly one of dataset (one target task) or tasks (a list of them)")
        return self

    def task_experiments(self) -> list[ExperimentConfig]:
        """One single-task experiment per target task (the task's source, else the shared one)."""
        if self.tasks is None:
            return [self]
        return [
            self.model_copy(update={"dataset": t.dataset, "source": t.source or self.source, "tasks": None})
            for t in self.tasks
        ]

    def fingerprint(self) -> str:
        """Hash of everything that determines the search's results (for resume checks and caching)."""
        # feature_cache changes speed, not results: a search may resume with another setting.
        body = self.model_dump(exclude={"source_file": True, "search_space_file": True, "training": {"feature_cache"}})
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def safe_load_yaml(path: Path) -> Any:
    """Read YAML with the safe loader only: `!!python/object` and friends are errors, never code."""
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from err
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], YAML-typed value)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set training.epochs=3")
    key, _, raw = item.partition("=")
    if not key.strip():
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {item!r}: value is not valid YAML: {err}") from err
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        keys, value = parse_override(item)
        node = raw
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                where = ".".join(keys[: depth + 1])
                raise ConfigError(f"--set {item!r}: {where} is a {type(child).__name__}, not a mapping")
            node = child
        node[keys[-1]] = value
    return raw


def _format_validation(err: ValidationError, origin: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{origin}: {loc}: {msg}")
    return "\n".join(lines)


def load_experiment(
    source: str | Path | dict[str, Any], overrides: list[str] | None = None, name: str | None = None
) -> ExperimentConfig:
    """Read, override and validate an experiment; the search space is validated by `tunetl.search.space`."""
    if isinstance(source, dict):
        raw, origin, base = dict(source), "<experiment>", Path.cwd()
    else:
        path = Path(source)
        raw = safe_load_yaml(path)
        origin, base = str(path), path.resolve().parent
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    raw = json.loads(json.dumps(raw))  # deep copy: overrides must not touch the caller's dict
    space = raw.get("search_space")
    space_file: str | None = "inline"
    if isinstance(space, str):
        space_path = Path(space) if Path(space).is_absolute() else base / space
        if not space_path.exists():
            raise ConfigError(f"{origin}: search_space: file not found: {space_path}")
        loaded = safe_load_yaml(space_path)
        if not isinstance(loaded, dict):
            raise ConfigError(f"{space_path}: a search space is a mapping of parameter -> value")
        raw["search_space"], space_file = loaded, str(space_path)
    elif space is None:
        raw["search_space"] = {}
    raw = apply_overrides(raw, overrides or [])
    if any(parse_override(o)[0] == ["search_space"] for o in overrides or []):
        space_file = "inline"  # replaced whole by --set: errors must not name the file any more
    if name:
        raw["name"] = name
    _resolve_paths(raw, base)
    raw["search_space_file"], raw["source_file"] = space_file, None if isinstance(source, dict) else origin
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation(err, origin)) from None


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Dataset folders and weight files are relative to the experiment file, like the search space."""
    holders = [raw]
    if isinstance(raw.get("tasks"), list):
        holders += [t for t in raw["tasks"] if isinstance(t, dict)]
    for holder in holders:
        src = holder.get("source") if isinstance(holder.get("source"), dict) else {}
        for spec in (holder.get("dataset"), src.get("train_on")):
            if isinstance(spec, dict) and isinstance(spec.get("path"), str):
                spec["path"] = str((base / spec["path"]).resolve())
        if isinstance(src.get("weights_file"), str):
            src["weights_file"] = str((base / src["weights_file"]).resolve())
