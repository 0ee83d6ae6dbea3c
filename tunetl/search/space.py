"""Search-space YAML -> a validated `SearchSpace` (no Ray here: validation must run before Ray starts).

Grid dimensions (and `conditions: {grid: [...]}`) are expanded here into explicit points, so that
combinations that break `frozen_depth <= transfer_depth` are dropped before any trial exists instead of
being scheduled and failing. Random dimensions (choice, uniform, loguniform, randint) are left to the
searcher.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from tunetl.params import LR_PARAMS, SEARCH_PARAMS, TrialParams, depth_from_fraction, needs_source

DIST_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
FLOAT_PARAMS = (*LR_PARAMS, "transfer_fraction", "frozen_fraction", "weight_decay", "label_smoothing", "mixup",
                "cutmix", "layer_decay", "grad_clip")
INT_PARAMS = ("transfer_depth", "frozen_depth", "images_per_label", "warmup_epochs")
#: Keys a search space may hold: every trial parameter except `condition` (set by `conditions`).
SPACE_KEYS = tuple(k for k in SEARCH_PARAMS if k != "condition") + ("conditions",)


class SpaceError(ValueError):
    """Invalid search space; the message starts with the key path."""


@dataclass(frozen=True)
class Dist:
    kind: str
    values: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None

    @property
    def is_grid(self) -> bool:
        return self.kind == "grid"


@dataclass
class SearchSpace:
    fixed: dict[str, Any] = field(default_factory=dict)
    dims: dict[str, Dist] = field(default_factory=dict)
    #: Joint settings; each a mapping of parameters (with an optional `name` -> `condition`).
    conditions: list[dict[str, Any]] | None = None
    conditions_kind: str = "grid"
    origin: str = "search_space"
    #: Stages of each backbone the space can use (set by `check_space`): depths, fractions and
    #: stage_multipliers are checked per backbone, and combinations that fit none are skipped.
    stage_counts: dict[str, int] = field(default_factory=dict)
    default_backbone: str | None = None
    #: `backbone: {choice: [...]}`: expanded into the points like a grid, sampled by Optuna.
    backbone_choice: bool = False

    def grid_dims(self) -> dict[str, Dist]:
        return {k: d for k, d in self.dims.items() if d.is_grid}

    def random_dims(self) -> dict[str, Dist]:
        return {k: d for k, d in self.dims.items() if not d.is_grid}

    def example_invalid(self) -> dict[str, Any]:
        return _first_invalid(self)

    def grid_points(self) -> tuple[list[dict[str, Any]], int]:
        """Every valid combination of the grid dimensions and grid conditions, and how many were skipped."""
        axes: list[list[dict[str, Any]]] = [[{k: v} for v in d.values] for k, d in self.grid_dims().items()]
        if self.conditions is not None and self.conditions_kind == "grid":
            axes.append([_condition_params(c) for c in self.conditions])
        points, skipped = [], 0
        for combo in itertools.product(*axes) if axes else [()]:
            point: dict[str, Any] = {}
            for part in combo:
                point.update(part)
            merged = {**self.fixed, **point}
            if _depths_invalid(merged, self):
                skipped += 1
                continue
            points.append(point)
        return points, skipped


def _first_invalid(space: SearchSpace) -> dict[str, Any]:
    axes = [[{k: v} for v in d.values] for k, d in space.grid_dims().items()]
    if space.conditions is not None and space.conditions_kind == "grid":
        axes.append([_condition_params(c) for c in space.conditions])
    for combo in itertools.product(*axes) if axes else [()]:
        merged = dict(space.fixed)
        for part in combo:
            merged.update(part)
        if _depths_invalid(merged, space):
            return merged
    return {}


def _condition_params(cond: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in cond.items() if k != "name"}
    if "name" in cond:
        out["condition"] = str(cond["name"])
    return out


def _depths_invalid(p: dict[str, Any], space: SearchSpace | None = None) -> bool:
    """frozen_depth > transfer_depth, or (when the backbone's stage count is known) depths beyond its
    stages or stage_multipliers of another length."""
    td, fd = p.get("transfer_depth"), p.get("frozen_depth", 0)
    backbone = p.get("backbone") or (space.default_backbone if space else None)
    stages = space.stage_counts.get(backbone) if space and backbone else None
    if stages is not None:
        if p.get("transfer_fraction") is not None:
            td = depth_from_fraction(p["transfer_fraction"], stages)
        if p.get("frozen_fraction") is not None:
            fd = depth_from_fraction(p["frozen_fraction"], stages)
        mults = p.get("stage_multipliers")
        if (isinstance(td, int) and td > stages) or (isinstance(fd, int) and fd > stages):
            return True
        if mults is not None and len(mults) != stages:
            return True
    return td is not None and isinstance(fd, int) and isinstance(td, int) and fd > td


def _check_value(key: str, value: Any, where: str) -> Any:
    """Validate one candidate value with the trial-parameter model, so errors match a trial's."""
    try:
        parsed = TrialParams.model_validate({key: value})
    except ValidationError as err:
        msg = err.errors()[0]["msg"].removeprefix("Value error, ")
        raise SpaceError(f"{where}: {value!r}: {msg}") from None
    out = getattr(parsed, key)
    return list(out) if isinstance(out, tuple) else out


def _parse_dist(key: str, spec: dict[str, Any], where: str) -> Dist:
    if len(spec) != 1 or next(iter(spec)) not in DIST_KINDS:
        raise SpaceError(
            f"{where}: expected a value or exactly one of {{{', '.join(DIST_KINDS)}}}, got keys {sorted(spec)}"
        )
    kind, arg = next(iter(spec.items()))
    if key == "backbone" and kind not in ("grid", "choice"):
        raise SpaceError(f"{where}.{kind}: backbone takes grid or choice, a list of backbone names")
    if kind in ("grid", "choice"):
        if not isinstance(arg, list) or not arg:
            raise SpaceError(f"{where}.{kind}: needs a non-empty list of values")
        return Dist(kind, tuple(_freeze(_check_value(key, v, f"{where}.{kind}")) for v in arg))
    if not (isinstance(arg, list) and len(arg) == 2 and all(isinstance(b, (int, float)) for b in arg)):
        raise SpaceError(f"{where}.{kind}: needs [low, high] numbers, got {arg!r}")
    low, high = arg
    if low > high:
        raise SpaceError(f"{where}.{kind}: low ({low}) > high ({high})")
    if kind == "loguniform" and low <= 0:
        raise SpaceError(f"{where}.loguniform: bounds must be > 0 (got {low}); use uniform or a grid with 0")
    if kind in ("uniform", "loguniform") and key not in FLOAT_PARAMS:
        raise SpaceError(f"{where}.{kind}: {key} is not a real-valued parameter (use grid/choice/randint)")
    if kind == "randint":
        if key not in INT_PARAMS:
            raise SpaceError(f"{where}.randint: {key} is not an integer parameter")
        if not (float(low).is_integer() and float(high).is_integer()):
            raise SpaceError(f"{where}.randint: bounds must be integers")
        _check_value(key, int(low), f"{where}.randint")
        return Dist(kind, low=int(low), high=int(high))
    _check_value(key, low, f"{where}.{kind}")
    return Dist(kind, low=float(low), high=float(high))


def _freeze(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def parse_space(raw: dict[str, Any], origin: str = "search_space") -> SearchSpace:
    """Parse and check a search-space mapping on its own (backbone checks come in `check_space`)."""
    if not isinstance(raw, dict):
        raise SpaceError(f"{origin}: a search space is a mapping of parameter -> value or distribution")
    space = SearchSpace(origin=origin)
    for key, spec in raw.items():
        where = f"{origin}.{key}"
        if key not in SPACE_KEYS:
            raise SpaceError(f"{where}: unknown key; valid keys are {', '.join(SPACE_KEYS)}")
        if key == "conditions":
            space.conditions, space.conditions_kind = _parse_conditions(spec, where)
        elif key == "backbone" and isinstance(spec, dict):
            dist = _parse_dist(key, spec, where)
            # Backbones join the points (their depths are checked per backbone before any trial).
            space.backbone_choice = dist.kind == "choice"
            space.dims[key] = Dist("grid", dist.values)
        elif isinstance(spec, dict):
            space.dims[key] = _parse_dist(key, spec, where)
        else:
            space.fixed[key] = _freeze(_check_value(key, spec, where))
    for depth, fraction in (("transfer_depth", "transfer_fraction"), ("frozen_depth", "frozen_fraction")):
        if values_of(space, depth) and values_of(space, fraction):
            raise SpaceError(f"{origin}: give {depth} or {fraction}, not both")
    points, skipped = space.grid_points()
    if not points:
        example = space.example_invalid()
        raise SpaceError(
            f"{origin}: no valid combination: every one has frozen_depth > transfer_depth "
            f"(e.g. frozen_depth ({example.get('frozen_depth')}) > transfer_depth ({example.get('transfer_depth')}))"
        )
    if space.conditions is not None and space.conditions_kind == "choice":
        if all(_depths_invalid({**space.fixed, **_condition_params(c)}) for c in space.conditions):
            raise SpaceError(f"{origin}.conditions: every condition has frozen_depth > transfer_depth")
    return space


def _parse_conditions(spec: Any, where: str) -> tuple[list[dict[str, Any]], str]:
    if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in ("grid", "choice")):
        raise SpaceError(f"{where}: expected {{grid: [mappings]}} or {{choice: [mappings]}}")
    kind, items = next(iter(spec.items()))
    if not isinstance(items, list) or not items:
        raise SpaceError(f"{where}.{kind}: needs a non-empty list of mappings")
    conds = []
    for i, item in enumerate(items):
        here = f"{where}.{kind}[{i}]"
        if not isinstance(item, dict):
            raise SpaceError(f"{here}: expected a mapping of parameters, got {item!r}")
        cond: dict[str, Any] = {}
        for key, value in item.items():
            if key == "name":
                cond["name"] = str(value)
            elif key not in SPACE_KEYS or key == "conditions":
                raise SpaceError(f"{here}.{key}: unknown key")
            else:
                cond[key] = _freeze(_check_value(key, value, f"{here}.{key}"))
        try:
            TrialParams.model_validate({k: v for k, v in cond.items() if k != "name"})
        except ValidationError as err:
            raise SpaceError(f"{here}: {err.errors()[0]['msg'].removeprefix('Value error, ')}") from None
        conds.append(cond)
    names = [c.get("name") for c in conds if "name" in c]
    if len(names) != len(set(names)):
        raise SpaceError(f"{where}: condition names must be unique, got {names}")
    return conds, kind


def values_of(space: SearchSpace, key: str) -> list[Any]:
    """Every value a key can take in the space (conditions included); [] when it is never set."""
    vals: list[Any] = []
    if key in space.fixed:
        vals.append(space.fixed[key])
    if key in space.dims:
        d = space.dims[key]
        vals.extend(d.values if d.kind in ("grid", "choice") else [d.low, d.high])
    for c in space.conditions or []:
        if key in c:
            vals.append(c[key])
    return vals


def transfer_depths(space: SearchSpace) -> list[int | None]:
    """Every transfer_depth a trial of the space can run with, the default (None: all stages) included
    when some trial leaves it unset (no value in the space, or a condition without one)."""
    depths: list[int | None] = list(values_of(space, "transfer_depth"))
    keys = ("transfer_depth", "transfer_fraction")
    if not any(k in space.fixed or k in space.dims for k in keys):
        conds = space.conditions or []
        if not conds or any(not any(k in c for k in keys) for c in conds):
            depths.append(None)
    return depths


def space_needs_source(space: SearchSpace) -> bool:
    """Whether any trial of the space transfers stages (`tunetl.params.needs_source` on resolved depths; a
    transfer_fraction above 0 counts as transferring)."""
    return (any(needs_source(d) for d in transfer_depths(space))
            or any(f > 0 for f in values_of(space, "transfer_fraction")))


def check_space(
    space: SearchSpace,
    *,
    num_stages: int,
    min_class_count: int | None = None,
    min_class_name: str | None = None,
    has_source: bool = True,
    searcher: str = "grid",
    stage_counts: dict[str, int] | None = None,
    default_backbone: str | None = None,
) -> None:
    """Checks that need the backbone and the dataset: stage counts, images per label, the source.

    With `stage_counts` (every backbone the space names, and the default) depths and multipliers are
    checked per backbone when the space varies the backbone: combinations that do not fit a backbone are
    skipped and counted, and only a space left with no valid combination is an error.
    """
    o = space.origin
    space.stage_counts = dict(stage_counts or {})
    space.default_backbone = default_backbone
    if values_of(space, "backbone"):
        if space.backbone_choice and searcher == "grid":
            raise SpaceError(f"{o}.backbone: with searcher grid, list backbones with grid (choice is sampled "
                             "by searcher optuna)")
        points, _ = space.grid_points()
        if not points:
            raise SpaceError(f"{o}: no valid combination: no depth or stage_multipliers value fits any backbone "
                             f"({', '.join(f'{b}: {n} stages' for b, n in space.stage_counts.items())})")
        num_stages = min(space.stage_counts.values()) if space.stage_counts else num_stages
        _check_common(space, num_stages, min_class_count, min_class_name, has_source, searcher)
        return
    for m in values_of(space, "stage_multipliers"):
        if len(m) != num_stages:
            raise SpaceError(
                f"{o}.stage_multipliers: {list(m)} has {len(m)} values but the backbone has {num_stages} stages"
            )
    for key in ("transfer_depth", "frozen_depth"):
        for v in values_of(space, key):
            if v is not None and v > num_stages:
                raise SpaceError(f"{o}.{key}: {v} > the backbone's {num_stages} stages")
    _check_common(space, num_stages, min_class_count, min_class_name, has_source, searcher)


def _check_common(
    space: SearchSpace,
    num_stages: int,
    min_class_count: int | None,
    min_class_name: str | None,
    has_source: bool,
    searcher: str,
) -> None:
    o = space.origin
    if min_class_count is not None:
        for v in values_of(space, "images_per_label"):
            if v != "all" and v is not None and v > min_class_count:
                raise SpaceError(
                    f"{o}.images_per_label: {v} > the {min_class_count} training images of the smallest "
                    f"class ({min_class_name}); use at most {min_class_count} or 'all'"
                )
    if not has_source and space_needs_source(space):
        raise SpaceError(
            f"{o}.transfer_depth: the experiment has no source weights, so only transfer_depth: 0 "
            "(training from scratch) is possible; a trial without transfer_depth transfers every stage "
            "(FTall); set source.train_on, source.weights or source.weights_file"
        )
    if "transfer_depth" in space.dims and not space.dims["transfer_depth"].is_grid:
        raise SpaceError(
            f"{o}.transfer_depth: sample transfer_depth with grid or conditions, not "
            f"{space.dims['transfer_depth'].kind} (frozen_depth must stay <= it)"
        )
    fd = space.dims.get("frozen_depth")
    if fd is not None and fd.kind == "choice":
        depths = [d if d is not None else num_stages for d in values_of(space, "transfer_depth")] or [num_stages]
        if max(fd.values) > min(depths):
            raise SpaceError(
                f"{o}.frozen_depth: choice {list(fd.values)} can exceed transfer_depth {min(depths)}; "
                "use randint (bounded per trial) or a grid (invalid pairs are skipped)"
            )
    if searcher in ("grid", "random"):
        for key in ("transfer_depth", "frozen_depth"):
            if key in space.dims and not space.dims[key].is_grid:
                raise SpaceError(
                    f"{o}.{key}: with searcher {searcher}, depths must be fixed, grid or set in conditions "
                    "(their constraint is resolved before trials start); use searcher optuna for "
                    f"{space.dims[key].kind}"
                )


def describe(space: SearchSpace) -> str:
    points, skipped = space.grid_points()
    parts = [f"{len(points)} grid point(s)"]
    if skipped:
        why = "frozen_depth > transfer_depth" + (", or depths/stage_multipliers that do not fit the backbone"
                                                  if space.stage_counts else "")
        parts.append(f"{skipped} invalid combination(s) skipped ({why})")
    rnd = space.random_dims()
    if rnd:
        parts.append("sampled: " + ", ".join(f"{k} ~ {d.kind}" for k, d in rnd.items()))
    return "; ".join(parts)

