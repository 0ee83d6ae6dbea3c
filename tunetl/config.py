"""Experiment YAML -> validated `ExperimentConfig`, parsed once with errors that name the key.

The search space (a file path or an inline mapping) is read here too, so that `--set` can reach into it
and every problem surfaces before Ray starts or an MLflow run exists.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tunetl.data.spec import DatasetSpec
from tunetl.params import no_bool
from tunetl.yaml_load import YamlInputError, load_yaml

#: Longest experiment name: it becomes a folder name with a timestamp appended.
MAX_NAME_CHARS = 100
_NAME_BAD = re.compile(r"[/\\\x00-\x1f\x7f]")


class ConfigError(ValueError):
    """Invalid experiment or search-space input; the message names the file and the key path."""


def check_name(name: str) -> str:
    """An experiment name that is safe as one folder name (it becomes `<storage>/<name>_<time>`)."""
    if not name or not name.strip():
        raise ValueError("must not be empty")
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"is {len(name)} characters long; use at most {MAX_NAME_CHARS}")
    if _NAME_BAD.search(name) or name.startswith(".") or ".." in name:
        raise ValueError(f"{name!r} cannot be a folder name: use letters, digits, '-', '_' and '.' "
                         "(no '/', no '..', no leading '.')")
    return name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool(cls, v: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        return no_bool(v, field.annotation if field else None)


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


#: Training keys that set the fine-tuning knobs' defaults (the trial parameters of the same names).
RECIPE_KEYS: tuple[str, ...] = (
    "weight_decay", "lr_schedule", "warmup_epochs", "label_smoothing", "mixup", "cutmix", "layer_decay", "grad_clip",
)
_LATE_KEYS = tuple(k for k in RECIPE_KEYS if k != "weight_decay")


class TrainingConfig(_Strict):
    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=64, ge=1)
    eval_batch_size: int = Field(default=512, ge=1)
    optimizer: Literal["sgd", "adam", "rmsprop"] = "sgd"
    base_lr: float = Field(default=0.01, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    #: `none` | `crop_flip` | `trivial` | `randaugment`; `false`/`true` mean none/crop_flip.
    augment: bool | Literal["none", "crop_flip", "trivial", "randaugment"] = False
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
    #: Defaults of the fine-tuning knobs (trial parameters of the same names; see tunetl.params).
    lr_schedule: Literal["constant", "cosine", "step"] = "constant"
    warmup_epochs: int = Field(default=0, ge=0)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    mixup: float = Field(default=0.0, ge=0)
    cutmix: float = Field(default=0.0, ge=0)
    layer_decay: float | None = Field(default=None, gt=0, le=1)
    grad_clip: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _warmup_within_epochs(self) -> TrainingConfig:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must be < epochs ({self.epochs}): warmup ramps up to the "
                "full learning rate, which some epochs must then use"
            )
        return self

    def recipe_defaults(self) -> dict[str, Any]:
        """The fine-tuning knobs' defaults as `TrialParams.resolved` takes them."""
        return {k: getattr(self, k) for k in RECIPE_KEYS}

    def recipe_changes(self) -> dict[str, Any]:
        """Knobs added after searches were first fingerprinted, where they differ from their defaults:
        hashes include only these, so searches and sources from before them keep their keys."""
        return {k: getattr(self, k) for k in _LATE_KEYS if getattr(self, k) != TrainingConfig.model_fields[k].default}


class SchedulerConfig(_Strict):
    type: Literal["asha", "hyperband", "median", "pbt", "pb2", "bohb", "none"] = "asha"
    grace_period: int = Field(default=2, ge=1)
    reduction_factor: float = Field(default=3, gt=1)
    #: median: a trial is compared with the others once this many have reported at its epoch.
    min_samples_required: int = Field(default=3, ge=1)
    #: pbt/pb2: epochs between perturbations, the bottom fraction that copies the top, resampling odds.
    perturbation_interval: int = Field(default=2, ge=1)
    quantile_fraction: float = Field(default=0.25, ge=0, le=0.5)
    resample_probability: float = Field(default=0.25, ge=0, le=1)
    #: pbt/pb2: perturb only when every trial of the group has reached the interval (reproducible).
    synch: bool = False
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


#: Objectives a multi-objective Optuna search may optimise, and their direction.
OBJECTIVES: dict[str, str] = {"val_acc": "max", "train_seconds": "min", "num_params": "min"}
#: The result key / trials-frame column each objective is read from (a trial's score is its best epoch).
OBJECTIVE_COLUMN: dict[str, str] = {"val_acc": "best_val_acc", "train_seconds": "train_seconds",
                                    "num_params": "num_params"}


class SearcherConfig(_Strict):
    type: Literal["grid", "random", "optuna"] = "grid"
    num_samples: int = Field(default=1, ge=1)
    seed: int = 0
    #: A registered meta-model's name, `history` (the finished trials of earlier searches of the same
    #: experiment), or both as a list.
    warm_start: str | list[str] | None = None
    #: optuna: several objectives (Pareto front) instead of best_val_acc alone, e.g. [val_acc, train_seconds].
    objectives: list[str] | None = Field(default=None, min_length=1)

    @field_validator("objectives")
    @classmethod
    def _known_objectives(cls, v: list[str] | None) -> list[str] | None:
        unknown = [k for k in v or [] if k not in OBJECTIVES]
        if unknown:
            raise ValueError(f"unknown objective(s) {unknown}; choose from {', '.join(OBJECTIVES)}")
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"objectives repeat a name: {v}")
        return v

    @model_validator(mode="after")
    def _objectives_need_optuna(self) -> SearcherConfig:
        if self.objectives and len(self.objectives) > 1 and self.type != "optuna":
            raise ValueError(f"objectives: several objectives need type: optuna (got type: {self.type})")
        return self

    #: Keep only the k backbones of the space's `backbone` axis that score best zero-shot (`prune_by`,
    #: computed with each backbone's source weights on the target before any trial).
    prune_backbones: int | None = Field(default=None, ge=1)
    prune_by: Literal["logme", "leep"] = "logme"

    @property
    def warm_starts(self) -> list[str]:
        ws = self.warm_start
        return [] if ws is None else [ws] if isinstance(ws, str) else list(ws)


class RunLimits(_Strict):
    """Budgets of a whole search (recorded on the parent run)."""

    #: Stop the search (running trials included) after this many seconds; finished trials are kept.
    time_budget_s: float | None = Field(default=None, gt=0)
    #: At most this many trials at once (default: as many as the resources allow).
    max_concurrent_trials: int | None = Field(default=None, ge=1)
    #: Stop the search once a trial of every group (scheduler.group_by) reached this val_acc (0-1).
    stop_at_val_acc: float | None = Field(default=None, gt=0, le=1)


class ResourcesConfig(_Strict):
    cpu: float = Field(default=1, gt=0)
    gpu: float = Field(default=0, ge=0)


class OutputConfig(_Strict):
    """What a search delivers besides its records: the winner's model (always logged on the parent run)."""

    #: Retrain the winning configuration on train+val (its seed, its best epoch count) before logging it.
    refit: bool = False
    #: Register the winner under this name (alias `champion` when it beats the current one); same as
    #: `tunetl run --register-model NAME`.
    register_model: str | None = Field(default=None, min_length=1)


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
    run: RunLimits = RunLimits()
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    max_failures: int = Field(default=0, ge=0)
    output: OutputConfig = OutputConfig()
    #: Where the search space came from (a file path or "inline"); informational.
    search_space_file: str | None = None
    #: Where the experiment came from; relative paths in it are resolved against its folder.
    source_file: str | None = None

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return check_name(v)

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
        # feature_cache changes speed, not results, and output acts after the trials: a search may resume
        # with other settings of either.
        body = self.model_dump(
            exclude={"source_file": True, "search_space_file": True, "output": True,
                     "training": {"feature_cache", *_LATE_KEYS}}
        )
        body["training"].update(self.training.recipe_changes())
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def safe_load_yaml(path: Path) -> Any:
    """Read YAML with tunetl's one loader (`tunetl.yaml_load`): `!!python/object` and friends are errors,
    never code; duplicate keys and alias bombs are refused."""
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from err
    try:
        return load_yaml(text)
    except YamlInputError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], YAML-typed value)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set training.epochs=3")
    key, _, raw = item.partition("=")
    if not key.strip():
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except YamlInputError as err:
        raise ConfigError(f"--set {item!r}: value is not valid YAML: {err}") from None
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
        if "\x00" in space or not space_path.is_file():
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
            for key in ("path", "test_path"):
                if isinstance(spec, dict) and isinstance(spec.get(key), str):
                    spec[key] = str((base / spec[key]).resolve())
        if isinstance(src.get("weights_file"), str):
            src["weights_file"] = str((base / src["weights_file"]).resolve())
