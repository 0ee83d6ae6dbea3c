"""The meta-regressor: past searches (the trials frame) -> a recommended recipe for a new dataset.

Dube et al. §4.2-4.3 ask for a mapping from task features (images/label, classes, source-target
similarity) to alpha_m (the best inner-layer rate at last-layer rate m) and to the best lr_scale, so
that a user can skip the search. The meta-dataset has one row per task and LL (task = dataset,
source, images_per_label); task-level targets (best LL, lr_scale, frozen_depth) repeat on each of a
task's rows and are fitted on one row per task.

Modelling choices (tens of rows, so robust and explainable beats flexible):
- inputs: the task's `feature.*` values; counts (images per label, train size, classes, resolution)
  enter as log10(1 + x), since Dube's alpha grows with images/label on a log scale; then each
  input is standardised on the training rows. Default inputs: every feature finite on all tasks
  and not constant.
- alpha is a hurdle: a classifier for alpha == 0 vs > 0 (IL = 0 is a real answer, never log(0))
  and a regressor on log10(alpha) for the positive rows; log10(LL) is an input when LL varied.
- best last_lr and lr_scale: regressors in log10 space, reported unsnapped (values between the
  tested ones are plausible interpolations of a learning rate).
- frozen_depth: a classifier, not a rounded regressor: depths act non-monotonically (Soekhoe's S4T
  collapses where S2T helps) and a vote always returns a depth that was tested on this backbone.
- a part whose training targets are constant predicts that constant.
- estimators (`kind`), measured with leave-one-task-out on synthetic 24-task meta-datasets shaped
  like Dube's Table 2 (alpha rising with images/label and falling with similarity, IL = 0 best for
  most tasks at <= 5 images/label, one grid step of noise; best LL, lr_scale and frozen depth
  following images/label with noise), mean of 5 draws, then constant-answer baseline:

  | kind | alpha log10 MAE | alpha 0/+ acc | last_lr log10 MAE | lr_scale log10 MAE | depth acc |
  |---|---|---|---|---|---|
  | "forest" (RandomForest, 50 trees, depth 3, leaf 2, random_state 0) | 0.55 | 0.89 | 0.03 | 0.14 | 0.71 |
  | "knn" (3 neighbours, distance-weighted) | 0.57 | 0.85 | 0.11 | 0.15 | 0.70 |
  | "ridge" (Ridge / LogisticRegression) | 0.47 | 0.86 | 0.19 | 0.13 | 0.68 |
  | constant (training mean / majority) | 0.73 | 0.79 | 0.49 | 0.31 | 0.38 |

  The forest is the default: best or within 0.01 on four of five targets, and like knn it cannot
  extrapolate past the tested values (ridge can, linearly in log-LR, which is unsafe for a new
  dataset far from the training tasks). `leave_one_task_out(meta_df, kind=...)` repeats the
  comparison on real records; the numbers above are from synthetic data, not a claim about them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
import pandas as pd

from tunetl.meta.analysis import (
    DEFAULT_METRIC,
    DEFAULT_TASK_COLS,
    alpha_beta,
    argmax_smallest,
    finished_trials,
    ipl_label,
    ipl_sort_key,
    scale_table,
)
from tunetl.params import SEARCH_PARAMS

KINDS = ("forest", "knn", "ridge")
DEFAULT_KIND = "forest"
#: Target columns of the meta-dataset (alpha per task and LL; the others per task).
TARGET_COLS = ("alpha", "best_last_lr", "best_lr_scale", "best_frozen_depth")
#: Model parts: name -> (target column, level, classifier?).
PARTS: dict[str, tuple[str, str, bool]] = {
    "alpha_zero": ("alpha", "row", True),
    "alpha_log": ("alpha", "row", False),
    "last_lr_log": ("best_last_lr", "task", False),
    "lr_scale_log": ("best_lr_scale", "task", False),
    "frozen_depth": ("best_frozen_depth", "task", True),
}
LL_INPUT = "log10_last_lr"
NEAREST = 3
_COUNT = re.compile(r"images_per_label|num_train|num_classes|resolution")
_RANGE_TOL = 1e-9


@dataclass(frozen=True)
class OutOfRange:
    """A feature of the new dataset outside the training tasks' range: the model extrapolates."""

    feature: str
    value: float
    low: float
    high: float


@dataclass
class Recommendation:
    """What to run on the new dataset; None where the training searches did not vary that setting."""

    inner_lr: float | None
    last_lr: float | None
    lr_scale: float | None
    frozen_depth: int | None
    nearest_tasks: list[tuple[str, float]]
    extrapolation: list[OutOfRange]
    notes: list[str] = field(default_factory=list)
    #: Per setting, ranges (low, high, how) for the value (see `MetaModel.intervals`).
    intervals: dict[str, list[tuple[float, float, str]]] = field(default_factory=dict)
    #: Per zero/non-zero or depth decision, the share of the forest's trees (or neighbours) that agree.
    agreement: dict[str, float] = field(default_factory=dict)


# --- the meta-dataset ---------------------------------------------------------------------------


def _key(values: Any) -> tuple[Any, ...]:
    """A hashable task key: NaN -> None, numpy scalars -> Python."""
    items = values if isinstance(values, tuple) else (values,)
    out = []
    for v in items:
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
            out.append(None)
        else:
            out.append(v.item() if hasattr(v, "item") else v)
    return tuple(out)


def describe_task(task: Mapping[str, Any]) -> str:
    """Printable task name: `dataset <- source @ N img/label`."""
    text = str(task["dataset"])
    if task.get("source") is not None:
        text += f" <- {task['source']}"
    if "images_per_label" in task:
        text += f" @ {ipl_label(task['images_per_label'])} img/label"
    return text


def _alpha_targets(
    frame: pd.DataFrame, metric: str, tc: list[str]
) -> tuple[dict[tuple[Any, ...], list[tuple[float, float, float]]], dict[tuple[Any, ...], float]]:
    """Per task: [(LL, alpha or NaN when IL did not vary, max_acc)], and the best LL where LL varied."""
    if not {"inner_lr", "last_lr", "base_lr"} & set(frame.columns):
        return {}, {}
    try:
        table = alpha_beta(frame, metric, task_cols=tc)
    except ValueError:
        return {}, {}
    rows: dict[tuple[Any, ...], list[tuple[float, float, float]]] = {}
    for r in table.itertuples(index=False):
        rec = r._asdict()
        key = _key(tuple(rec[c] for c in tc))
        alpha = float(rec["alpha"]) if rec["n_il"] >= 2 else math.nan
        rows.setdefault(key, []).append((float(rec["last_lr"]), alpha, float(rec["max_acc"])))
    best = {
        key: argmax_smallest({ll: acc for ll, _, acc in lls})
        for key, lls in rows.items()
        if len({ll for ll, _, _ in lls}) >= 2
    }
    return rows, best


def _scale_targets(
    frame: pd.DataFrame, df: pd.DataFrame, metric: str, tc: list[str]
) -> dict[tuple[Any, ...], float]:
    """Best lr_scale (analysis.scale_table) of each task that tried at least two scales."""
    if "lr_scale" not in df.columns:
        return {}
    table = scale_table(frame, metric, task_cols=tc)
    out = {}
    for key, group in table.groupby(tc, dropna=False, sort=False):
        if len(group) >= 2:
            out[_key(key)] = float(group.loc[group["best"], "lr_scale"].iloc[0])
    return out


def _depth_targets(df: pd.DataFrame, metric: str, tc: list[str]) -> dict[tuple[Any, ...], float]:
    """Best frozen_depth per task (transferred trials): the depth whose best configuration has the
    highest mean over seeds; tasks that tried a single depth have none."""
    if "frozen_depth" not in df.columns:
        return {}
    d = df.copy()
    d["frozen_depth"] = pd.to_numeric(d["frozen_depth"], errors="coerce").fillna(0).astype("int64")
    if "transfer_depth" in d.columns:
        d = d[pd.to_numeric(d["transfer_depth"], errors="coerce").fillna(-1) != 0]
    skip = {"frozen_depth", "images_per_label", "condition"}
    config = [c for c in dict.fromkeys((*SEARCH_PARAMS, "backbone")) if c in d.columns and c not in skip]
    d["_config"] = [repr(r) for r in d[config].itertuples(index=False, name=None)] if config else ""
    means = d.groupby([*tc, "frozen_depth", "_config"], dropna=False)[metric].mean().reset_index()
    best = means.groupby([*tc, "frozen_depth"], dropna=False)[metric].max().reset_index()
    out = {}
    for key, group in best.groupby(tc, dropna=False, sort=False):
        if len(group) >= 2:
            acc = dict(
                zip(group["frozen_depth"].astype(float), group[metric].astype(float), strict=True)
            )
            out[_key(key)] = argmax_smallest(acc)
    return out


def meta_dataset(frame: pd.DataFrame, metric: str = DEFAULT_METRIC) -> pd.DataFrame:
    """One row per task and LL: the task's mean `feature.*` values, `alpha` (Dube's alpha_m at
    LL = `last_lr`), and the task-level targets `best_last_lr`, `best_lr_scale`,
    `best_frozen_depth`; each target is NaN where the task's trials did not vary that setting.
    """
    df = finished_trials(frame, metric)
    tc = [c for c in DEFAULT_TASK_COLS if c in df.columns]
    if "dataset" not in tc:
        raise ValueError(
            "the trials frame has no `dataset` column; load it with tunetl.tracking.load_trials"
        )
    features = sorted(c for c in df.columns if c.startswith("feature."))
    alphas, best_ll = _alpha_targets(frame, metric, tc)
    scales = _scale_targets(frame, df, metric, tc)
    depths = _depth_targets(df, metric, tc)

    out: list[dict[str, Any]] = []
    for raw_key, group in df.groupby(tc, dropna=False, sort=False):
        key = _key(raw_key)
        task = dict(zip(tc, key, strict=True))
        base: dict[str, Any] = {"task": describe_task(task), **task}
        targets = {
            "best_last_lr": best_ll.get(key, math.nan),
            "best_lr_scale": scales.get(key, math.nan),
            "best_frozen_depth": depths.get(key, math.nan),
        }
        extra = {
            "n_trials": len(group),
            "experiments": ",".join(sorted({str(e) for e in group["experiment"].dropna()}))
            if "experiment" in group.columns
            else "",
            **{c: float(pd.to_numeric(group[c], errors="coerce").mean()) for c in features},
        }
        for ll, alpha, acc in alphas.get(key) or [(math.nan, math.nan, math.nan)]:
            out.append({**base, "last_lr": ll, "alpha": alpha, "max_acc": acc, **targets, **extra})
    meta = pd.DataFrame(out)
    order = ["dataset", "source", "backbone", "images_per_label", "last_lr"]

    def sort_key(series: pd.Series) -> pd.Series:
        return series.map(ipl_sort_key) if series.name == "images_per_label" else series

    by = [c for c in order if c in meta.columns]
    meta = meta.sort_values(by, key=sort_key, kind="stable", na_position="first").reset_index(
        drop=True
    )
    meta.attrs["metric"] = metric
    return meta


def task_table(meta_df: pd.DataFrame) -> pd.DataFrame:
    """One row per task (the task-level targets and features repeat on a task's LL rows)."""
    _check_meta(meta_df)
    return meta_df.drop_duplicates("task").reset_index(drop=True)


def _check_meta(meta_df: pd.DataFrame) -> None:
    missing = [c for c in ("task", "last_lr", *TARGET_COLS) if c not in meta_df.columns]
    if missing:
        raise ValueError(
            f"meta-dataset lacks column(s) {missing}; build it with meta_dataset(trials_frame)"
        )


# --- fitting ------------------------------------------------------------------------------------


def _transform(name: str, values: Any) -> np.ndarray:
    """Model scale of a feature: counts as log10(1 + x), other features as they are."""
    x = np.asarray(values, dtype="float64")
    if name == LL_INPUT or not _COUNT.search(name):
        return x
    return np.log10(1.0 + np.clip(x, 0.0, None))


def default_features(meta_df: pd.DataFrame) -> list[str]:
    """The `feature.*` columns finite on every task and not constant across tasks."""
    tasks = task_table(meta_df)
    out = []
    for c in sorted(c for c in tasks.columns if c.startswith("feature.")):
        values = pd.to_numeric(tasks[c], errors="coerce").to_numpy(dtype="float64")
        if np.isfinite(values).all() and np.unique(values).size > 1:
            out.append(c)
    return out


_THREADS: list[Any] = []


def _one_thread() -> Any:
    """Single-threaded BLAS/OpenMP: on a handful of rows, thread start-up costs 50x the work.
    The controller (which scans the loaded libraries) is made once per process."""
    if not _THREADS:
        from threadpoolctl import ThreadpoolController

        _THREADS.append(ThreadpoolController())
    return _THREADS[0].limit(limits=1)


def _estimator(kind: str, classify: bool, n: int) -> Any:
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

    if kind == "knn":
        cls = KNeighborsClassifier if classify else KNeighborsRegressor
        return cls(n_neighbors=min(3, n), weights="distance", algorithm="brute")
    if kind == "ridge":
        return LogisticRegression(C=1.0) if classify else Ridge(alpha=1.0)
    forest = RandomForestClassifier if classify else RandomForestRegressor
    return forest(n_estimators=50, max_depth=3, min_samples_leaf=2, random_state=0)


def _constant(y: np.ndarray, classify: bool) -> float:
    """Majority class (ties -> smaller) or mean: the prediction of a part with nothing to learn."""
    if not classify:
        return float(y.mean())
    values, counts = np.unique(y, return_counts=True)
    return float(values[counts == counts.max()].min())


def _fit_part(
    rows: pd.DataFrame, y: np.ndarray, inputs: list[str], kind: str, classify: bool
) -> dict[str, Any]:
    """One fitted part: inputs, their standardisation, and an estimator or a constant."""
    x = (
        np.column_stack([_transform(c, rows[c]) for c in inputs])
        if inputs
        else np.zeros((len(y), 0))
    )
    center = x.mean(axis=0) if inputs else np.zeros(0)
    scale = x.std(axis=0) if inputs else np.zeros(0)
    scale = np.where(scale > 0, scale, 1.0)
    part: dict[str, Any] = {
        "inputs": list(inputs),
        "center": center,
        "scale": scale,
        "estimator": None,
        "constant": None,
        "n": len(y),
        "classify": classify,
    }
    if np.unique(y).size == 1 or not inputs:
        part["constant"] = _constant(y, classify)
    else:
        with _one_thread():
            part["estimator"] = _estimator(kind, classify, len(y)).fit((x - center) / scale, y)
    return part


def _part_rows(meta_df: pd.DataFrame, name: str) -> tuple[pd.DataFrame, np.ndarray]:
    """Training rows and targets of a part (model scale: log10 for rates, bool for alpha == 0)."""
    target, level, _ = PARTS[name]
    rows = meta_df if level == "row" else task_table(meta_df)
    values = pd.to_numeric(rows[target], errors="coerce")
    if name.startswith("alpha"):
        rows = rows[np.isfinite(values) & (pd.to_numeric(rows["last_lr"], errors="coerce") > 0)]
        values = pd.to_numeric(rows[target], errors="coerce")
        if name == "alpha_zero":
            return rows, (values.to_numpy() == 0)
        rows = rows[values > 0]
        return rows, np.log10(pd.to_numeric(rows[target]).to_numpy(dtype="float64"))
    if name == "frozen_depth":
        rows = rows[np.isfinite(values)]
        return rows, pd.to_numeric(rows[target]).to_numpy(dtype="float64")
    rows = rows[np.isfinite(values) & (values > 0)]
    return rows, np.log10(pd.to_numeric(rows[target]).to_numpy(dtype="float64"))


def _most_common(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype="float64")
    return _constant(arr, classify=True)


class MetaModel:
    """Fitted parts (sklearn estimators or constants), the meta-dataset they came from, the input
    features with their training ranges, a description and the leave-one-task-out errors.

    A plain class with `__getstate__`/`__setstate__` turning the table into plain lists, so that
    skops can serialise it without trusting pandas internals.
    """

    def __init__(
        self,
        *,
        kind: str,
        features: list[str],
        ranges: dict[str, tuple[float, float]],
        parts: dict[str, dict[str, Any] | None],
        table: pd.DataFrame,
        description: str,
        default_last_lr: float | None,
        loto: dict[str, float] | None = None,
    ) -> None:
        self.kind = kind
        self.features = features
        self.ranges = ranges
        self.parts = parts
        self.table = table
        self.description = description
        self.default_last_lr = default_last_lr
        self.loto = loto
        #: The sources the training features came from (`tunetl.meta.source_match`); set by fit-regressor.
        self.sources: list[dict[str, Any]] = []
        tasks = task_table(table)
        self._task_names = [str(t) for t in tasks["task"]]
        x = self._task_matrix(tasks)
        self.task_center = x.mean(axis=0) if features else np.zeros(0)
        spread = x.std(axis=0) if features else np.zeros(0)
        self.task_scale = np.where(spread > 0, spread, 1.0)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        table = self.table
        state["table"] = {
            "columns": [str(c) for c in table.columns],
            "data": {str(c): table[c].tolist() for c in table.columns},
            "attrs": {str(k): str(v) for k, v in table.attrs.items()},
        }
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        table = state.pop("table")
        self.__dict__.update(state)
        self.table = pd.DataFrame(table["data"], columns=table["columns"])
        self.table.attrs.update(table.get("attrs", {}))
        self.ranges = {k: (float(v[0]), float(v[1])) for k, v in self.ranges.items()}

    @property
    def targets(self) -> list[str]:
        """Modelled targets among inner_lr, last_lr, lr_scale, frozen_depth."""
        out = []
        if self.parts.get("alpha_zero") or self.parts.get("alpha_log"):
            out.append("inner_lr")
        if self.parts.get("last_lr_log") or (out and self.default_last_lr is not None):
            out.append("last_lr")
        if self.parts.get("lr_scale_log"):
            out.append("lr_scale")
        if self.parts.get("frozen_depth"):
            out.append("frozen_depth")
        return out

    @property
    def n_tasks(self) -> int:
        return len(self._task_names)

    def _task_matrix(self, rows: pd.DataFrame) -> np.ndarray:
        if not self.features:
            return np.zeros((len(rows), 0))
        return np.column_stack([_transform(c, rows[c]) for c in self.features])

    def _inputs(self, features: Mapping[str, Any]) -> dict[str, float]:
        """The model's input features from `features`, checked finite."""
        values, missing = {}, []
        for name in self.features:
            raw = features.get(name)
            value = math.nan if raw is None else float(raw)
            if not math.isfinite(value):
                missing.append(name)
            values[name] = value
        if missing:
            raise ValueError(
                f"feature(s) {', '.join(missing)} missing or not finite; this meta-model was trained "
                f"on {', '.join(self.features)}: compute them with `tunetl features --dataset ...`"
            )
        return values

    def _part_value(self, name: str, values: Mapping[str, float]) -> float | None:
        part = self.parts.get(name)
        if part is None:
            return None
        if part["estimator"] is None:
            return float(part["constant"])
        x = np.array([[float(_transform(c, values[c])) for c in part["inputs"]]])
        z = (x - np.asarray(part["center"])) / np.asarray(part["scale"])
        with _one_thread():
            return float(np.asarray(part["estimator"].predict(z))[0])

    def _part_z(self, name: str, values: Mapping[str, float]) -> np.ndarray:
        part = self.parts[name]
        assert part is not None
        x = np.array([[float(_transform(c, values[c])) for c in part["inputs"]]])
        return (x - np.asarray(part["center"])) / np.asarray(part["scale"])

    def _tree_range(self, name: str, values: Mapping[str, float]) -> tuple[float, float] | None:
        """10th..90th percentile of the forest's trees' predictions of a regression part (model
        scale): how much the trees disagree, not a calibrated interval. None for other estimators."""
        part = self.parts.get(name)
        est = None if part is None else part["estimator"]
        if est is None or part["classify"] or not hasattr(est, "estimators_"):
            return None
        z = self._part_z(name, values)
        with _one_thread():
            preds = np.array([float(t.predict(z)[0]) for t in est.estimators_])
        return float(np.percentile(preds, 10)), float(np.percentile(preds, 90))

    def _agreement(self, name: str, values: Mapping[str, float]) -> float | None:
        """Share of the votes (trees, neighbours) or probability behind a classifier part's answer;
        1.0 for a constant part."""
        part = self.parts.get(name)
        if part is None:
            return None
        est = part["estimator"]
        if est is None:
            return 1.0
        with _one_thread():
            return float(np.max(est.predict_proba(self._part_z(name, values))))

    def intervals(
        self, values: Mapping[str, float], last_lr: float | None
    ) -> dict[str, list[tuple[float, float, str]]]:
        """Ranges around each predicted rate: the conformal 80% interval from this model's
        leave-one-task-out |log10 errors| (`*_q80`), and the forest's 10-90% tree spread. inner_lr's
        ranges are those of its positive part (`predict` leaves them out when it answers IL = 0)."""
        loto = self.loto or {}
        out: dict[str, list[tuple[float, float, str]]] = {}
        point = {**values, LL_INPUT: math.log10(last_lr) if last_lr and last_lr > 0 else math.nan}
        for setting, part, key in (
            ("inner_lr", "alpha_log", "alpha_log10_mae_q80"),
            ("last_lr", "last_lr_log", "last_lr_log10_mae_q80"),
            ("lr_scale", "lr_scale_log", "lr_scale_log10_mae_q80"),
        ):
            if self.parts.get(part) is None:
                continue
            at = point if setting == "inner_lr" else values
            centre = self._part_value(part, at)
            assert centre is not None
            ranges = []
            q = loto.get(key)
            if q is not None and math.isfinite(q):
                ranges.append((10.0 ** (centre - q), 10.0 ** (centre + q),
                               f"conformal {COVERAGE:.0%} (leave-one-task-out)"))
            trees = self._tree_range(part, at)
            if trees is not None:
                ranges.append((10.0 ** trees[0], 10.0 ** trees[1], "trees 10-90%"))
            if ranges:
                out[setting] = ranges
        return out

    def _alpha(self, values: Mapping[str, float], last_lr: float | None) -> float | None:
        """inner_lr at LL = last_lr: 0 where the zero-part says so, else 10**(log part)."""
        if self.parts.get("alpha_zero") is None and self.parts.get("alpha_log") is None:
            return None
        point = {**values, LL_INPUT: math.log10(last_lr) if last_lr and last_lr > 0 else math.nan}
        if self._part_value("alpha_zero", point):
            return 0.0
        log_alpha = self._part_value("alpha_log", point)
        return None if log_alpha is None else float(10.0**log_alpha)

    def nearest(self, features: Mapping[str, Any], k: int = NEAREST) -> list[tuple[str, float]]:
        """The k training tasks closest in standardised feature space, nearest first."""
        values = self._inputs(features)
        tasks = task_table(self.table)
        if not self.features:
            return [(t, 0.0) for t in self._task_names[:k]]
        x = (self._task_matrix(tasks) - self.task_center) / self.task_scale
        point = np.array([float(_transform(c, values[c])) for c in self.features])
        z = (point - self.task_center) / self.task_scale
        dist = np.sqrt(((x - z) ** 2).sum(axis=1))
        order = sorted(range(len(dist)), key=lambda i: (dist[i], self._task_names[i]))
        return [(self._task_names[i], float(dist[i])) for i in order[:k]]

    def out_of_range(self, features: Mapping[str, Any]) -> list[OutOfRange]:
        """Given features outside the training tasks' range (constant training features included)."""
        out = []
        for name, (low, high) in sorted(self.ranges.items()):
            raw = features.get(name)
            if raw is None or not math.isfinite(float(raw)):
                continue
            value = float(raw)
            tol = _RANGE_TOL * max(1.0, abs(low), abs(high))
            if value < low - tol or value > high + tol:
                out.append(OutOfRange(name, value, low, high))
        return out

    @overload
    def predict(self, features: pd.DataFrame) -> pd.DataFrame: ...

    @overload
    def predict(self, features: Mapping[str, Any]) -> Recommendation: ...

    def predict(self, features: Mapping[str, Any] | pd.DataFrame) -> Recommendation | pd.DataFrame:
        """Recommended inner_lr, last_lr, lr_scale, frozen_depth for a dataset's `feature.*` values;
        a frame of datasets gives `predict_frame`'s table (what MLflow's pyfunc flavour calls)."""
        if isinstance(features, pd.DataFrame):
            return self.predict_frame(features)
        values = self._inputs(features)
        notes: list[str] = []
        log_ll = self._part_value("last_lr_log", values)
        last_lr = None if log_ll is None else float(10.0**log_ll)
        inner_lr = None
        if self.parts.get("alpha_zero") or self.parts.get("alpha_log"):
            if last_lr is None and self.default_last_lr is not None:
                last_lr = self.default_last_lr
                notes.append(
                    f"last_lr was not varied within a task; inner_lr is the best IL at the most "
                    f"common LL {last_lr:g}"
                )
            inner_lr = self._alpha(values, last_lr)
        log_scale = self._part_value("lr_scale_log", values)
        depth = self._part_value("frozen_depth", values)
        extrapolation = self.out_of_range(features)
        if extrapolation:
            notes.append(
                "the dataset lies outside the training tasks on "
                f"{', '.join(o.feature for o in extrapolation)}: treat the recommendation as a guess"
            )
        point = {**values, LL_INPUT: math.log10(last_lr) if last_lr and last_lr > 0 else math.nan}
        agreement = {
            name: a
            for name, a in (
                ("inner_lr = 0" if inner_lr == 0 else "inner_lr > 0", self._agreement("alpha_zero", point)),
                ("frozen_depth", self._agreement("frozen_depth", values)),
            )
            if a is not None
        }
        return Recommendation(
            inner_lr=inner_lr,
            last_lr=last_lr,
            lr_scale=None if log_scale is None else float(10.0**log_scale),
            frozen_depth=None if depth is None else round(depth),
            nearest_tasks=self.nearest(features),
            extrapolation=extrapolation,
            notes=notes,
            intervals={k: v for k, v in self.intervals(values, last_lr).items()
                       if not (k == "inner_lr" and inner_lr == 0)},
            agreement=agreement,
        )

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Row-wise `predict` on a frame of `feature.*` columns: the settings and an extrapolation flag."""
        recs = [
            self.predict({str(k): v for k, v in row.items()})
            for row in frame.to_dict(orient="records")
        ]
        return pd.DataFrame(
            {
                "inner_lr": [r.inner_lr for r in recs],
                "last_lr": [r.last_lr for r in recs],
                "lr_scale": [r.lr_scale for r in recs],
                "frozen_depth": [r.frozen_depth for r in recs],
                "extrapolated": [bool(r.extrapolation) for r in recs],
            }
        )


def _describe_model(
    meta_df: pd.DataFrame, kind: str, features: list[str], targets: list[str]
) -> str:
    experiments = sorted(
        {
            e
            for text in meta_df.get("experiments", pd.Series(dtype=str)).dropna()
            for e in str(text).split(",")
            if e
        }
    )
    metric = meta_df.attrs.get("metric", DEFAULT_METRIC)
    return (
        f"{kind} meta-model of {', '.join(targets)} on {meta_df['task'].nunique()} tasks "
        f"({len(meta_df)} task x LL rows, metric {metric}) from experiment(s) "
        f"{', '.join(experiments) or 'unknown'}; inputs: {', '.join(features) or 'none'}"
    )


def fit_meta_model(
    meta_df: pd.DataFrame,
    features: Sequence[str] | None = None,
    kind: str = DEFAULT_KIND,
    evaluate: bool = True,
    description: str | None = None,
) -> MetaModel:
    """Fit every part a target exists for; with `evaluate`, also record leave_one_task_out errors."""
    _check_meta(meta_df)
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    chosen = list(features) if features is not None else default_features(meta_df)
    tasks = task_table(meta_df)
    bad = [
        c
        for c in chosen
        if c not in tasks.columns
        or not np.isfinite(pd.to_numeric(tasks[c], errors="coerce").to_numpy(dtype="float64")).all()
    ]
    if bad:
        raise ValueError(
            f"feature(s) {', '.join(bad)} are missing or not finite on every task of the "
            f"meta-dataset; pick from {', '.join(default_features(meta_df)) or 'none'}"
        )
    ranges = {}
    for c in sorted(c for c in tasks.columns if c.startswith("feature.")):
        values = pd.to_numeric(tasks[c], errors="coerce").to_numpy(dtype="float64")
        values = values[np.isfinite(values)]
        if values.size:
            ranges[c] = (float(values.min()), float(values.max()))

    parts: dict[str, dict[str, Any] | None] = {}
    default_ll = None
    for name, (_, _, classify) in PARTS.items():
        rows, y = _part_rows(meta_df, name)
        if len(y) == 0:
            parts[name] = None
            continue
        inputs = list(chosen)
        if name.startswith("alpha"):
            if pd.to_numeric(rows["last_lr"]).nunique() > 1:
                inputs.append(LL_INPUT)
                rows = rows.assign(**{LL_INPUT: np.log10(pd.to_numeric(rows["last_lr"]))})
            if name == "alpha_zero":
                default_ll = _most_common(pd.to_numeric(rows["last_lr"]).tolist())
        parts[name] = _fit_part(rows, y, inputs, kind, classify)
    if all(p is None for p in parts.values()):
        raise ValueError(
            "nothing to learn: no task varied inner_lr with last_lr, lr_scale or frozen_depth; run "
            "searches over those (search_spaces/il_ll.yaml, graduated.yaml, frozen_depth.yaml) first"
        )
    targets = [
        t
        for t, p in (
            ("alpha", "alpha_zero"),
            ("last_lr", "last_lr_log"),
            ("lr_scale", "lr_scale_log"),
            ("frozen_depth", "frozen_depth"),
        )
        if parts.get(p) is not None
    ]
    model = MetaModel(
        kind=kind,
        features=chosen,
        ranges=ranges,
        parts=parts,
        table=meta_df.reset_index(drop=True),
        description=description or _describe_model(meta_df, kind, chosen, targets),
        default_last_lr=default_ll,
    )
    if evaluate:
        model.loto = leave_one_task_out(meta_df, features=chosen, kind=kind)
    return model


def feature_importance(model: MetaModel) -> pd.DataFrame:
    """Which inputs each fitted part leans on: one row per input, one column per part, each column
    summing to 1. Forest: mean decrease in impurity (`feature_importances_`); ridge: |coefficient|
    on the standardised inputs; knn (no such notion) and constant parts: NaN. In-sample, so it says
    what the model uses, not what generalises: `drop_column_errors` measures that."""
    inputs = list(dict.fromkeys([*model.features, *(
        c for p in model.parts.values() if p is not None for c in p["inputs"]
    )]))
    table = pd.DataFrame(index=pd.Index(inputs, name="feature"))
    for name, part in model.parts.items():
        if part is None:
            continue
        est = part["estimator"]
        weights = np.full(len(part["inputs"]), math.nan)
        if est is not None and hasattr(est, "feature_importances_"):
            weights = np.asarray(est.feature_importances_, dtype="float64")
        elif est is not None and hasattr(est, "coef_"):
            coef = np.abs(np.asarray(est.coef_, dtype="float64")).reshape(-1, len(part["inputs"])).mean(axis=0)
            weights = coef / coef.sum() if coef.sum() > 0 else coef
        table[name] = pd.Series(weights, index=part["inputs"])
    if len(table.columns):
        table = table.loc[table.mean(axis=1, skipna=True).fillna(0).sort_values(ascending=False).index]
    return table


def drop_column_errors(
    meta_df: pd.DataFrame,
    features: Sequence[str] | None = None,
    kind: str = DEFAULT_KIND,
    hold_out: str = "pair",
    keys: Sequence[str] = ("alpha_log10_mae", "alpha_zero_accuracy", "last_lr_log10_mae"),
) -> pd.DataFrame:
    """Leave-one-task-out errors with each input feature dropped in turn (row `none`: all kept): a
    feature whose removal does not worsen any error carries no signal the others lack here."""
    chosen = list(features) if features is not None else default_features(meta_df)
    rows = []
    for dropped in [None, *chosen]:
        kept = [c for c in chosen if c != dropped]
        loto = leave_one_task_out(meta_df, features=kept, kind=kind, hold_out=hold_out)
        rows.append({"dropped": dropped or "none", **{k: loto.get(k, math.nan) for k in keys}})
    return pd.DataFrame(rows)


# --- leave-one-task-out -------------------------------------------------------------------------


#: LOTO error keys -> the key counting their cases.
_LOTO_COUNTS = {
    "alpha_zero_accuracy": "alpha_n",
    "alpha_log10_mae": "alpha_positive_n",
    "last_lr_log10_mae": "last_lr_n",
    "lr_scale_log10_mae": "lr_scale_n",
    "frozen_depth_accuracy": "frozen_depth_n",
}


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


#: Coverage of the intervals `predict` prints from the leave-one-task-out residuals.
COVERAGE = 0.8
#: Leave-one-task-out variants: drop the task only, or every task of its dataset/source pair too.
HOLD_OUTS = ("pair", "task")
PAIR_COLS = ("dataset", "source")


def pair_of(meta_df: pd.DataFrame) -> pd.Series:
    """Each row's dataset/source pair: the same split at another images-per-label is the same data,
    so a held-out task's pair leaves training with it (else the model has seen the held-out images)."""
    cols = [c for c in PAIR_COLS if c in meta_df.columns]
    if not cols:
        return meta_df["task"].astype(str)
    return meta_df[cols].astype(str).agg("|".join, axis=1)


def held_out_training(meta_df: pd.DataFrame, task: str, hold_out: str = "pair") -> pd.DataFrame:
    """The training rows when `task` is held out: without the task and, for `pair`, its pair."""
    if hold_out not in HOLD_OUTS:
        raise ValueError(f"hold_out {hold_out!r} is not one of {', '.join(HOLD_OUTS)}")
    own = meta_df["task"] == task
    if hold_out == "pair":
        pairs = pair_of(meta_df)
        own = pairs.isin(set(pairs[own]))
    return meta_df[~own]


def conformal_quantile(residuals: Sequence[float], coverage: float = COVERAGE) -> float:
    """The split-conformal quantile of absolute residuals: the ceil((n+1)c)-th smallest, so that a
    new case falls within +-q with probability >= c if cases are exchangeable; inf when n is too small."""
    r = np.sort(np.abs(np.asarray(residuals, dtype="float64")))
    k = math.ceil((len(r) + 1) * coverage)
    return float(r[k - 1]) if 0 < k <= len(r) else math.inf


def leave_one_task_out(
    meta_df: pd.DataFrame,
    features: Sequence[str] | None = None,
    kind: str = DEFAULT_KIND,
    hold_out: str = "pair",
) -> dict[str, float]:
    """Errors of models fitted without each task in turn, on that task; with constant baselines.

    With `hold_out="pair"` (the default) every task of the held-out task's dataset/source pair
    leaves training too. alpha: mean |log10 error| of the log part on positive cases
    (`alpha_log10_mae`) and accuracy of zero vs positive (`alpha_zero_accuracy`); last_lr and
    lr_scale: mean |log10 error|; frozen_depth: accuracy. `*_baseline` is the same error for the
    training tasks' mean (or majority), the one-setting-fits-all answer; `*_n` counts the cases;
    `*_q80` is the conformal quantile of the absolute log10 errors (`predict`'s intervals). NaN
    where there are none.
    """
    _check_meta(meta_df)
    chosen = list(features) if features is not None else default_features(meta_df)
    errors: dict[str, list[float]] = {k: [] for k in _LOTO_COUNTS}
    baselines: dict[str, list[float]] = {k: [] for k in _LOTO_COUNTS}
    names = list(dict.fromkeys(meta_df["task"]))
    for task in names:
        train = held_out_training(meta_df, task, hold_out)
        test = meta_df[meta_df["task"] == task]
        if train.empty:
            continue
        try:
            model = fit_meta_model(train, features=chosen, kind=kind, evaluate=False)
        except ValueError:
            continue
        _score_alpha(model, train, test, errors, baselines)
        _score_task(model, train, test, errors, baselines)
    out: dict[str, float] = {"n_tasks": float(len(names))}
    for key, values in errors.items():
        out[key] = _mean(values)
        out[f"{key}_baseline"] = _mean(baselines[key])
        out[_LOTO_COUNTS[key]] = float(len(values))
        if key.endswith("_mae"):
            out[f"{key}_q80"] = conformal_quantile(values) if values else math.nan
    return out


def _score_alpha(
    model: MetaModel,
    train: pd.DataFrame,
    test: pd.DataFrame,
    errors: dict[str, list[float]],
    baselines: dict[str, list[float]],
) -> None:
    """alpha cases of the held-out task, each at its own LL."""
    _, zero_train = _part_rows(train, "alpha_zero")
    _, log_train = _part_rows(train, "alpha_log")
    rows, zero_true = _part_rows(test, "alpha_zero")
    if not len(zero_train):
        return
    values = model._inputs(task_table(test).iloc[0].to_dict())
    majority = _constant(zero_train, classify=True)
    for (_, row), is_zero in zip(rows.iterrows(), zero_true, strict=True):
        point = {**values, LL_INPUT: math.log10(float(row["last_lr"]))}
        errors["alpha_zero_accuracy"].append(
            float(bool(model._part_value("alpha_zero", point)) == is_zero)
        )
        baselines["alpha_zero_accuracy"].append(float(bool(majority) == is_zero))
        log_pred = model._part_value("alpha_log", point)
        if not is_zero and log_pred is not None and len(log_train):
            truth = math.log10(float(row["alpha"]))
            errors["alpha_log10_mae"].append(abs(log_pred - truth))
            baselines["alpha_log10_mae"].append(abs(float(log_train.mean()) - truth))


def _score_task(
    model: MetaModel,
    train: pd.DataFrame,
    test: pd.DataFrame,
    errors: dict[str, list[float]],
    baselines: dict[str, list[float]],
) -> None:
    """Task-level targets of the held-out task."""
    values = model._inputs(task_table(test).iloc[0].to_dict())
    for part, key in (
        ("last_lr_log", "last_lr_log10_mae"),
        ("lr_scale_log", "lr_scale_log10_mae"),
        ("frozen_depth", "frozen_depth_accuracy"),
    ):
        _, y_test = _part_rows(test, part)
        _, y_train = _part_rows(train, part)
        pred = model._part_value(part, values)
        if not len(y_test) or pred is None:
            continue
        truth = float(y_test[0])
        if key.endswith("accuracy"):
            errors[key].append(float(round(pred) == round(truth)))
            baselines[key].append(float(_constant(y_train, classify=True) == truth))
        else:
            errors[key].append(abs(pred - truth))
            baselines[key].append(abs(float(y_train.mean()) - truth))
