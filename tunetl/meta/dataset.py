"""The meta-dataset: the trials table -> one row per task and LL with the targets a meta-model learns.

A task is (dataset, source, images_per_label); `alpha` is Dube's alpha_m (the best inner-layer rate at
last-layer rate m), one row per LL; the task-level targets (best LL, lr_scale, frozen_depth) repeat on a
task's rows and are fitted on one row per task (`task_table`). Each target is NaN where the task's trials
did not vary that setting.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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

#: Target columns of the meta-dataset (alpha per task and LL; the others per task).
TARGET_COLS = ("alpha", "best_last_lr", "best_lr_scale", "best_frozen_depth")
#: The model's input for a row's last-layer rate (alpha parts only, where LL varied).
LL_INPUT = "log10_last_lr"
_COUNT = re.compile(r"images_per_label|num_train|num_classes|resolution")


@dataclass(frozen=True)
class Target:
    """What one part of a meta-model learns: a meta-dataset column, at row or task level."""

    column: str
    #: "row": one case per task and LL (alpha); "task": one case per task.
    level: str
    classify: bool


#: The meta-model's parts, by name.
PARTS: dict[str, Target] = {
    "alpha_zero": Target("alpha", "row", True),
    "alpha_log": Target("alpha", "row", False),
    "last_lr_log": Target("best_last_lr", "task", False),
    "lr_scale_log": Target("best_lr_scale", "task", False),
    "frozen_depth": Target("best_frozen_depth", "task", True),
}


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
    check_meta(meta_df)
    return meta_df.drop_duplicates("task").reset_index(drop=True)


def check_meta(meta_df: pd.DataFrame) -> None:
    missing = [c for c in ("task", "last_lr", *TARGET_COLS) if c not in meta_df.columns]
    if missing:
        raise ValueError(
            f"meta-dataset lacks column(s) {missing}; build it with meta_dataset(trials_frame)"
        )


def model_scale(name: str, values: Any) -> np.ndarray:
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


def part_rows(meta_df: pd.DataFrame, name: str) -> tuple[pd.DataFrame, np.ndarray]:
    """Training rows and targets of a part (model scale: log10 for rates, bool for alpha == 0)."""
    target = PARTS[name].column
    rows = meta_df if PARTS[name].level == "row" else task_table(meta_df)
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
