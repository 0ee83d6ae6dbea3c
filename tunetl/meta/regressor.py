"""The meta-regressor: a meta-dataset (`meta.dataset`) -> a recommended recipe for a new dataset.

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
  dataset far from the training tasks). `meta.loto.leave_one_task_out(meta_df, kind=...)` repeats the
  comparison on real records; the numbers above are from synthetic data, not a claim about them.

Layout: `meta.dataset` builds the table, `meta.parts.Part` is one fitted target, this module holds
`MetaModel` (kept here: registered models name it as `tunetl.meta.regressor.MetaModel`) and its fit,
`meta.loto` evaluates by leaving tasks out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
import pandas as pd

from tunetl.meta.analysis import DEFAULT_METRIC
from tunetl.meta.dataset import (
    LL_INPUT,
    PARTS,
    check_meta,
    default_features,
    model_scale,
    part_rows,
    task_table,
)
from tunetl.meta.parts import DEFAULT_KIND, KINDS, Part, constant_answer, feature_matrix, standardiser

NEAREST = 3
_RANGE_TOL = 1e-9
#: Coverage of the intervals `predict` prints from the leave-one-task-out residuals.
COVERAGE = 0.8


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
        parts: dict[str, Part | None],
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
        #: The sources the training features came from (`tunetl.features.source_match`); set by fit-regressor.
        self.sources: list[dict[str, Any]] = []
        tasks = task_table(table)
        self._task_names = [str(t) for t in tasks["task"]]
        self.task_center, self.task_scale = standardiser(self._task_matrix(tasks))

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
        self.parts = {name: Part.from_record(p, self.kind) if isinstance(p, dict) else p
                      for name, p in self.parts.items()}

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
        return feature_matrix(rows, self.features, len(rows))

    def inputs_of(self, features: Mapping[str, Any]) -> dict[str, float]:
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

    def part_value(self, name: str, values: Mapping[str, float]) -> float | None:
        """A part's answer on the model scale; None if the model has no such part."""
        part = self.parts.get(name)
        return None if part is None else part.predict_one(values)

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
            centre = self.part_value(part, at)
            assert centre is not None
            ranges = []
            q = loto.get(key)
            if q is not None and math.isfinite(q):
                ranges.append((10.0 ** (centre - q), 10.0 ** (centre + q),
                               f"conformal {COVERAGE:.0%} (leave-one-task-out)"))
            trees = self.parts[part].tree_range(at)  # type: ignore[union-attr]
            if trees is not None:
                ranges.append((10.0 ** trees[0], 10.0 ** trees[1], "trees 10-90%"))
            if ranges:
                out[setting] = ranges
        return out

    def alpha_at(self, values: Mapping[str, float], last_lr: float | None) -> float | None:
        """inner_lr at LL = last_lr: 0 where the zero-part says so, else 10**(log part)."""
        if self.parts.get("alpha_zero") is None and self.parts.get("alpha_log") is None:
            return None
        point = {**values, LL_INPUT: math.log10(last_lr) if last_lr and last_lr > 0 else math.nan}
        if self.part_value("alpha_zero", point):
            return 0.0
        log_alpha = self.part_value("alpha_log", point)
        return None if log_alpha is None else float(10.0**log_alpha)

    def nearest(self, features: Mapping[str, Any], k: int = NEAREST) -> list[tuple[str, float]]:
        """The k training tasks closest in standardised feature space, nearest first."""
        values = self.inputs_of(features)
        tasks = task_table(self.table)
        if not self.features:
            return [(t, 0.0) for t in self._task_names[:k]]
        x = (self._task_matrix(tasks) - self.task_center) / self.task_scale
        point = np.array([float(model_scale(c, values[c])) for c in self.features])
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
        values = self.inputs_of(features)
        notes: list[str] = []
        log_ll = self.part_value("last_lr_log", values)
        last_lr = None if log_ll is None else float(10.0**log_ll)
        inner_lr = None
        if self.parts.get("alpha_zero") or self.parts.get("alpha_log"):
            if last_lr is None and self.default_last_lr is not None:
                last_lr = self.default_last_lr
                notes.append(
                    f"last_lr was not varied within a task; inner_lr is the best IL at the most "
                    f"common LL {last_lr:g}"
                )
            inner_lr = self.alpha_at(values, last_lr)
        log_scale = self.part_value("lr_scale_log", values)
        depth = self.part_value("frozen_depth", values)
        extrapolation = self.out_of_range(features)
        if extrapolation:
            notes.append(
                "the dataset lies outside the training tasks on "
                f"{', '.join(o.feature for o in extrapolation)}: treat the recommendation as a guess"
            )
        point = {**values, LL_INPUT: math.log10(last_lr) if last_lr and last_lr > 0 else math.nan}
        agreement = {
            name: part.agreement(at)
            for name, part, at in (
                ("inner_lr = 0" if inner_lr == 0 else "inner_lr > 0", self.parts.get("alpha_zero"), point),
                ("frozen_depth", self.parts.get("frozen_depth"), values),
            )
            if part is not None
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
    description: str | None = None,
) -> MetaModel:
    """Fit every part a target exists for (`meta.loto.fit_with_loto` also records how well it generalises)."""
    check_meta(meta_df)
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

    parts: dict[str, Part | None] = {}
    default_ll = None
    for name, target in PARTS.items():
        rows, y = part_rows(meta_df, name)
        if len(y) == 0:
            parts[name] = None
            continue
        inputs = list(chosen)
        if name.startswith("alpha"):
            if pd.to_numeric(rows["last_lr"]).nunique() > 1:
                inputs.append(LL_INPUT)
                rows = rows.assign(**{LL_INPUT: np.log10(pd.to_numeric(rows["last_lr"]))})
            if name == "alpha_zero":
                default_ll = constant_answer(pd.to_numeric(rows["last_lr"]).to_numpy(dtype="float64"), classify=True)
        parts[name] = Part(inputs, kind, target.classify).fit(rows, y)
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
    return model


def feature_importance(model: MetaModel) -> pd.DataFrame:
    """Which inputs each fitted part leans on: one row per input, one column per part, each column
    summing to 1 (`Part.input_weights`). In-sample, so it says what the model uses, not what
    generalises: `meta.loto.drop_column_errors` measures that."""
    inputs = list(dict.fromkeys([*model.features, *(
        c for p in model.parts.values() if p is not None for c in p.inputs
    )]))
    table = pd.DataFrame(index=pd.Index(inputs, name="feature"))
    for name, part in model.parts.items():
        if part is not None:
            table[name] = pd.Series(part.input_weights(), index=part.inputs)
    if len(table.columns):
        table = table.loc[table.mean(axis=1, skipna=True).fillna(0).sort_values(ascending=False).index]
    return table
