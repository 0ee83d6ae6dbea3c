"""The seeds' analyses on the trials frame: Dube's alpha/beta and scale gains, Soekhoe's conditions,
freezing heuristic and source/target swap averages.

Input is the trials frame of docs/architecture.md (one row per trial). Only FINISHED rows with a
finite metric count. Accuracies are fractions in the frame; every table column that holds percent
ends in `_pct`. A *task* is (dataset, source, backbone, images_per_label) by default (`task_cols`: a search over
backbones compares each backbone's recipes separately); columns
absent from the frame are skipped, missing values (no source) form their own group.
`images_per_label` is normalised to int with "all" -> -1 (the frame's convention) and sorted last.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from tunetl.records import ALL_IMAGES

DEFAULT_METRIC = "best_val_acc"
DEFAULT_TASK_COLS: tuple[str, ...] = ("dataset", "source", "backbone", "images_per_label")
#: Columns that describe a configuration, never a measured value (kept as keys when averaging).
PARAM_COLS = frozenset(
    {
        "images_per_label",
        "transfer_depth",
        "frozen_depth",
        "inner_lr",
        "last_lr",
        "lr_scale",
        "base_lr",
        "seed",
        "epochs",
        "condition",
    }
)
_NUMERIC_PARAMS = ("transfer_depth", "frozen_depth", "inner_lr", "last_lr", "lr_scale", "base_lr")
_TIE_TOL = 1e-9
_SNT = re.compile(r"^S(\d+)T$")


def _normalise_ipl(value: Any) -> int:
    """Map an images_per_label value (int, "50", 50.0, "all", -1, missing) to int, "all" -> -1."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ALL_IMAGES
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "all":
            return ALL_IMAGES
        if text.lstrip("-").isdigit():
            value = int(text)
    if isinstance(value, (int, np.integer, float, np.floating)) and float(value) == int(value):
        number = int(value)
        if number == ALL_IMAGES or number >= 1:
            return number
    raise ValueError(
        f"images_per_label value {value!r} is neither a positive integer nor 'all' (-1); "
        "fix the trials frame's images_per_label column"
    )


def ipl_sort_key(value: Any) -> float:
    """Sort key for images_per_label: numbers ascending, "all" (-1) last."""
    number = _normalise_ipl(value)
    return math.inf if number == ALL_IMAGES else float(number)


def ipl_label(value: Any) -> str:
    """Printable images_per_label: "all" for -1."""
    number = _normalise_ipl(value)
    return "all" if number == ALL_IMAGES else str(number)


def condition_sort_key(name: Any) -> str:
    """Order conditions as the seeds print them: base, FTall, S1T, S2T, ..., then others by name."""
    text = str(name)
    if text == "base":
        return "0"
    if text == "FTall":
        return "1"
    match = _SNT.match(text)
    if match:
        return f"2{int(match.group(1)):06d}"
    return f"3{text}"


def _sorted(df: pd.DataFrame, cols: Sequence[str]) -> pd.DataFrame:
    """Stable sort with images_per_label and condition in their natural orders."""

    def key(series: pd.Series) -> pd.Series:
        if series.name == "images_per_label":
            return series.map(ipl_sort_key)
        if series.name == "condition":
            return series.map(condition_sort_key)
        return series

    cols = [c for c in cols if c in df.columns]
    if not cols:
        return df.reset_index(drop=True)
    return df.sort_values(cols, key=key, kind="stable", na_position="last").reset_index(drop=True)


def finished_trials(frame: pd.DataFrame, metric: str = DEFAULT_METRIC) -> pd.DataFrame:
    """FINISHED rows with a finite `metric`, params coerced to numbers, images_per_label normalised.

    Raises ValueError when the metric column is missing or no row qualifies, because every analysis
    below would otherwise return an empty table that looks like a result.
    """
    if metric not in frame.columns:
        raise ValueError(
            f"trials frame has no column {metric!r}; columns are {list(frame.columns)}; "
            "pass metric= one of them"
        )
    df = frame.copy()
    if "status" in df.columns:
        df = df[df["status"].astype(str).str.upper() == "FINISHED"]
    df[metric] = pd.to_numeric(df[metric], errors="coerce")
    df = df[np.isfinite(df[metric].to_numpy(dtype=float))]
    if df.empty:
        raise ValueError(
            f"no FINISHED trial with a finite {metric!r} in the trials frame "
            f"({len(frame)} rows); check that the search ran and logged {metric!r}"
        )
    for col in _NUMERIC_PARAMS:
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    if "images_per_label" in df.columns:
        df["images_per_label"] = df["images_per_label"].map(_normalise_ipl).astype("int64")
    return df.reset_index(drop=True)


def _task_cols(df: pd.DataFrame, task_cols: Sequence[str] | None) -> list[str]:
    """Default task columns present in the frame, or the caller's, which must all exist."""
    if task_cols is None:
        return [c for c in DEFAULT_TASK_COLS if c in df.columns]
    missing = [c for c in task_cols if c not in df.columns]
    if missing:
        raise ValueError(
            f"task_cols {missing} are not columns of the trials frame: {list(df.columns)}"
        )
    return list(task_cols)


def _require(df: pd.DataFrame, cols: Iterable[str], why: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"the trials frame has no column(s) {missing}, needed for {why}")


def _task_key(row: pd.Series, cols: Sequence[str]) -> tuple[Any, ...]:
    """Hashable task identity; NaN becomes None so that two missing sources compare equal."""
    return tuple(None if pd.isna(row[c]) else row[c] for c in cols)


def argmax_smallest(values: pd.Series | dict[Any, float], tol: float = _TIE_TOL) -> Any:
    """Index label (or key) of the maximum; ties (within `tol`) go to the smallest, so the most
    conservative learning rate or depth wins a tie."""
    values = pd.Series(values, dtype=float)
    best = values.max()
    return min(values.index[values >= best - tol])


def il_means(
    frame: pd.DataFrame,
    metric: str = DEFAULT_METRIC,
    task_cols: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """Seed means of `metric` per (task, LL, IL), and the task columns used: what alpha/beta and the
    report's accuracy-vs-IL plots are both drawn from. Missing rates fall back to base_lr, as
    TrialParams does."""
    df = finished_trials(frame, metric)
    for col in ("inner_lr", "last_lr"):
        if col not in df.columns and "base_lr" in df.columns:
            df[col] = df["base_lr"]
        elif col in df.columns and "base_lr" in df.columns:
            df[col] = df[col].fillna(df["base_lr"])
    _require(df, ("inner_lr", "last_lr"), "alpha_beta (Dube's IL/LL grid)")
    df = df.dropna(subset=["inner_lr", "last_lr"])
    if df.empty:
        raise ValueError(
            "no finished trial has both inner_lr and last_lr set; alpha_beta needs an IL/LL grid"
        )
    tc = _task_cols(df, task_cols)
    per_il = df.groupby([*tc, "last_lr", "inner_lr"], dropna=False)[metric].mean().reset_index()
    return per_il, tc


def alpha_beta(
    frame: pd.DataFrame,
    metric: str = DEFAULT_METRIC,
    task_cols: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Dube et al. §4.2: per task and last-layer rate m, the best inner rate and the spread over IL.

    Seeds are averaged per (task, LL, IL) first. alpha_m = the IL with the best mean accuracy
    (ties within 1e-9 -> the smaller IL, so IL = 0 wins a tie), max_m / min_m = best / worst mean
    accuracy (fractions), beta_m = (max_m - min_m) / min_m * 100 (eq. 1; inf when
    min_m = 0 < max_m).
    Missing inner_lr / last_lr fall back to base_lr, as TrialParams does.
    """
    per_il, tc = il_means(frame, metric, task_cols)
    rows = []
    for _, group in per_il.groupby([*tc, "last_lr"], dropna=False, sort=False):
        acc = pd.Series(group[metric].to_numpy(), index=group["inner_lr"].to_numpy())
        hi, lo = float(acc.max()), float(acc.min())
        beta = 0.0 if hi == lo else (math.inf if lo == 0 else (hi - lo) / lo * 100.0)
        first = group.iloc[0]
        rows.append(
            {
                **{c: first[c] for c in tc},
                "last_lr": first["last_lr"],
                "alpha": float(argmax_smallest(acc)),
                "max_acc": hi,
                "min_acc": lo,
                "beta": beta,
                "n_il": int(acc.index.nunique()),
            }
        )
    return _sorted(pd.DataFrame(rows), [*tc, "last_lr"])


def condition_names(frame: pd.DataFrame) -> pd.Series:
    """The Soekhoe condition of every row: the `condition` value when set, else derived.

    Derived from (transfer_depth t, frozen_depth d); a missing t means "all stages", a missing d 0:
    t = 0 -> "base"; d = 0 and t all or the largest t in the frame -> "FTall";
    d > 0 and (t all or t = d) -> f"S{d}T"; anything else -> f"T{t}F{d}" (transfer t, freeze d).
    """
    n = len(frame)
    td = (
        pd.to_numeric(frame["transfer_depth"], errors="coerce")
        if "transfer_depth" in frame
        else pd.Series(np.nan, index=frame.index)
    )
    fd = (
        pd.to_numeric(frame["frozen_depth"], errors="coerce")
        if "frozen_depth" in frame
        else pd.Series(np.nan, index=frame.index)
    )
    fd = fd.fillna(0)
    t_max = td.max() if td.notna().any() else math.nan
    given = frame["condition"] if "condition" in frame else pd.Series([None] * n, index=frame.index)
    names = []
    for t, d, name in zip(td, fd, given, strict=True):
        if isinstance(name, str) and name.strip():
            names.append(name)
        elif t == 0:
            names.append("base")
        elif d == 0 and (pd.isna(t) or t == t_max):
            names.append("FTall")
        elif d > 0 and (pd.isna(t) or t == d):
            names.append(f"S{int(d)}T")
        else:
            names.append(f"T{int(t)}F{int(d)}")
    return pd.Series(names, index=frame.index, name="condition", dtype=object)


def condition_table(
    frame: pd.DataFrame,
    metric: str = DEFAULT_METRIC,
    task_cols: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Accuracy per task (by default dataset, source, images_per_label) and condition, in percent.

    Columns: task cols, `condition`, `acc_mean_pct`, `acc_std_pct` (sample std over the rows,
    NaN for one seed), `n` (rows averaged: seeds, and any other setting that varied), and `stopped`
    (an early stopper cut at least one of those rows short; False when the frame does not say).
    """
    df = finished_trials(frame, metric)
    df["condition"] = condition_names(df)
    tc = _task_cols(df, task_cols)
    grouped = df.groupby([*tc, "condition"], dropna=False)[metric]
    table = grouped.agg(["mean", "std", "count"]).reset_index()
    table = table.rename(columns={"mean": "acc_mean_pct", "std": "acc_std_pct", "count": "n"})
    table["acc_mean_pct"] *= 100.0
    table["acc_std_pct"] *= 100.0
    flags = df["stopped_early"].fillna(False).astype(bool) if "stopped_early" in df.columns else False
    cut = df.assign(stopped=flags).groupby([*tc, "condition"], dropna=False)["stopped"].any().reset_index()
    table = table.merge(cut, on=[*tc, "condition"], how="left")
    return _sorted(table, [*tc, "condition"])


def condition_pivot(
    table: pd.DataFrame, value: str = "acc_mean_pct", decimals: int | None = 1
) -> pd.DataFrame:
    """Wide view of a condition_table (or swap_average) for printing: rows images_per_label
    (prefixed by dataset/source when they vary), columns conditions in seed order, values `value`.
    """
    _require(table, ("condition", value), "condition_pivot (pass condition_table's output)")
    index = [
        c
        for c in ("dataset", "source", "backbone")
        if c in table.columns and table[c].nunique(dropna=False) > 1
    ]
    if "images_per_label" in table.columns:
        index.append("images_per_label")
    if not index:
        raise ValueError(
            "condition_pivot needs an images_per_label column (or varying dataset/source)"
        )
    ordered = _sorted(table, [*index, "condition"])
    if ordered.duplicated([*index, "condition"]).any():
        raise ValueError(
            f"condition_pivot: several rows share {[*index, 'condition']}; "
            "aggregate first (condition_table with matching task_cols)"
        )
    ordered["_row"] = ordered.groupby(index, dropna=False, sort=False).ngroup()
    wide = ordered.pivot(index="_row", columns="condition", values=value)
    wide = wide[sorted(wide.columns, key=condition_sort_key)]
    labels = ordered.drop_duplicates("_row").set_index("_row").loc[wide.index, index]
    if "images_per_label" in index:
        labels["images_per_label"] = labels["images_per_label"].map(ipl_label)
    wide.index = pd.MultiIndex.from_frame(labels) if len(index) > 1 else pd.Index(labels[index[0]])
    wide.columns.name = "condition"
    return wide.round(decimals) if decimals is not None else wide


def freeze_heuristic(
    frame: pd.DataFrame,
    metric: str = DEFAULT_METRIC,
    task_cols: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Soekhoe §4: "up to n images per label freeze the first l stages; above, fine-tune all".

    Transferred rows only (transfer_depth != 0; missing frozen_depth = 0). Per images_per_label
    the mean accuracy of every frozen depth (seeds averaged per task, then tasks averaged); the
    best depth (ties -> the smaller depth, so freezing must strictly beat FTall). Freezing *wins*
    at a size when the best depth is > 0 and a frozen_depth 0 (FTall) row exists there.
    l = the depth that wins most often (ties -> the smaller), n = the largest size at which
    freezing wins; `exceptions` lists smaller sizes where it did not.
    Returns {"l", "n", "rule", "exceptions", "table"}.
    """
    df = finished_trials(frame, metric)
    _require(df, ("images_per_label",), "freeze_heuristic")
    df["frozen_depth"] = (
        pd.to_numeric(df["frozen_depth"], errors="coerce").fillna(0) if "frozen_depth" in df else 0
    )
    df["frozen_depth"] = df["frozen_depth"].astype("int64")
    if "transfer_depth" in df.columns:
        df = df[df["transfer_depth"].fillna(-1) != 0]
    if df.empty:
        raise ValueError(
            "freeze_heuristic: every finished trial is a scratch (transfer_depth 0) trial"
        )
    tc = [c for c in _task_cols(df, task_cols) if c != "images_per_label"]
    per_task = df.groupby([*tc, "images_per_label", "frozen_depth"], dropna=False)[metric].mean()
    per_size = per_task.groupby(level=["images_per_label", "frozen_depth"]).mean()
    rows = []
    for size in sorted(per_size.index.get_level_values(0).unique(), key=ipl_sort_key):
        acc = per_size.xs(size, level="images_per_label")
        depth = int(argmax_smallest(acc))
        ftall = float(acc.get(0, math.nan))
        best = float(acc.max())
        rows.append(
            {
                "images_per_label": int(size),
                "best_frozen_depth": depth,
                "best_pct": best * 100,
                "ftall_pct": ftall * 100,
                "gain_pct": (best - ftall) * 100,
                "freezing_wins": bool(depth > 0 and not math.isnan(ftall)),
            }
        )
    table = pd.DataFrame(rows)
    wins = table[table["freezing_wins"]]
    if table["ftall_pct"].isna().all():
        return {
            "l": None,
            "n": None,
            "exceptions": [],
            "table": table,
            "rule": "cannot tell: no frozen_depth 0 (FTall) trial to compare freezing with",
        }
    if wins.empty:
        return {
            "l": None,
            "n": None,
            "exceptions": [],
            "table": table,
            "rule": "no freezing helps: fine-tune all stages at every size tested",
        }
    counts = wins["best_frozen_depth"].value_counts()
    l_best = int(min(counts.index[counts == counts.max()]))
    n_best = int(max(wins["images_per_label"], key=ipl_sort_key))
    below = table[table["images_per_label"].map(ipl_sort_key) <= ipl_sort_key(n_best)]
    exceptions = [int(v) for v in below.loc[~below["freezing_wins"], "images_per_label"]]
    stages = "stage" if l_best == 1 else f"{l_best} stages"
    largest = max(table["images_per_label"], key=ipl_sort_key)
    if n_best == largest:
        tail = (
            ", including all images"
            if n_best == ALL_IMAGES
            else f" (up to {n_best} images per label)"
        )
        rule = f"freeze the first {stages} at every size tested{tail}"
    else:
        rule = (
            f"freeze the first {stages} up to {n_best} images per label; above that fine-tune all"
        )
    return {"l": l_best, "n": n_best, "rule": rule, "exceptions": exceptions, "table": table}


def _matches(df: pd.DataFrame, config: Mapping[str, Any]) -> pd.Series:
    """Rows whose columns equal every value of `config` (numbers compared with a tolerance)."""
    _require(df, config.keys(), "the baseline config")
    mask = pd.Series(True, index=df.index)
    for col, want in config.items():
        if col == "images_per_label":
            mask &= df[col] == _normalise_ipl(want)
        elif isinstance(want, (int, float)) and not isinstance(want, bool):
            mask &= np.isclose(pd.to_numeric(df[col], errors="coerce"), float(want))
        else:
            mask &= df[col] == want
    return mask


def scale_table(
    frame: pd.DataFrame,
    metric: str = DEFAULT_METRIC,
    task_cols: Sequence[str] | None = None,
    baseline: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Dube §4.3: mean accuracy (percent) per task and lr_scale, and each task's best scale.

    Rows matching the `baseline` config (if given) are left out: they are the reference, not part of
    the sweep. Missing lr_scale = 1.0. Columns: task cols, `lr_scale`, `acc_mean_pct`, `n`, `best`
    (True on the best scale of the task; ties -> the smaller scale).
    """
    df = finished_trials(frame, metric)
    if baseline:
        df = df[~_matches(df, baseline)]
    df["lr_scale"] = df["lr_scale"].fillna(1.0) if "lr_scale" in df.columns else 1.0
    if df.empty:
        raise ValueError("scale_table: no finished trial is left besides the baseline config")
    tc = _task_cols(df, task_cols)
    grouped = df.groupby([*tc, "lr_scale"], dropna=False)[metric]
    table = (
        grouped.agg(["mean", "count"])
        .reset_index()
        .rename(columns={"mean": "acc_mean_pct", "count": "n"})
    )
    table["acc_mean_pct"] *= 100.0
    table["best"] = False
    if tc:
        for _, group in table.groupby(tc, dropna=False, sort=False):
            acc = pd.Series(group["acc_mean_pct"].to_numpy(), index=group.index)
            scales = group["lr_scale"]
            top = acc.max()
            table.loc[scales[acc >= top - _TIE_TOL * 100].idxmin(), "best"] = True
    else:
        top = table["acc_mean_pct"].max()
        table.loc[
            table.loc[table["acc_mean_pct"] >= top - _TIE_TOL * 100, "lr_scale"].idxmin(), "best"
        ] = True
    return _sorted(table, [*tc, "lr_scale"])


def scale_summary(
    frame: pd.DataFrame,
    baseline_scale: float | None = None,
    metric: str = DEFAULT_METRIC,
    task_cols: Sequence[str] | None = None,
    baseline: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Dube §4.3's three numbers: oracle (best scale per task), one fixed scale, and a baseline.

    - oracle_acc_pct: mean over tasks of each task's best-scale accuracy (88.0 in the paper,
      78.1 its baseline);
    - fixed_scale: the scale most often best (ties -> higher fixed_acc_pct, then the smaller scale)
      and fixed_acc_pct: mean accuracy when always using it (79.7 in the paper);
    - baseline_acc_pct: the `baseline` config's rows (e.g. {"inner_lr": 0}) if given, else the
      sweep at `baseline_scale` (default 1.0; None in the result when that scale was not run);
    - gain_share = (fixed - baseline) / (oracle - baseline): the share of the oracle gain one fixed
      scale captures (NaN when the oracle gains nothing).
    Means are over the tasks that have every number (n_tasks; n_tasks_skipped counts the others).
    """
    table = scale_table(frame, metric, task_cols, baseline=baseline)
    tc = _task_cols(table, task_cols)
    keyed = table.assign(_task=[_task_key(r, tc) for _, r in table.iterrows()])
    oracle = keyed[keyed["best"]].set_index("_task")["acc_mean_pct"]
    counts = keyed.loc[keyed["best"], "lr_scale"].value_counts()
    by_scale = {
        s: keyed[keyed["lr_scale"] == s].set_index("_task")["acc_mean_pct"] for s in counts.index
    }
    top = counts.max()
    fixed = min(
        (s for s in counts.index if counts[s] == top),
        key=lambda s: (-by_scale[s].reindex(oracle.index).mean(), s),
    )
    fixed_acc = by_scale[fixed].reindex(oracle.index)

    description: str | None
    if baseline:
        df = finished_trials(frame, metric)
        df = df[_matches(df, baseline)]
        if df.empty:
            raise ValueError(
                f"scale_summary: no finished trial matches the baseline config {dict(baseline)}"
            )
        base = (
            df.assign(_task=[_task_key(r, tc) for _, r in df.iterrows()])
            .groupby("_task")[metric]
            .mean()
            * 100
        )
        description = ", ".join(f"{k}={v}" for k, v in baseline.items())
    else:
        scale = 1.0 if baseline_scale is None else float(baseline_scale)
        at_scale = keyed[np.isclose(keyed["lr_scale"], scale)]
        if at_scale.empty and baseline_scale is not None:
            raise ValueError(
                f"scale_summary: baseline_scale={baseline_scale} was not run; scales are "
                f"{sorted(keyed['lr_scale'].unique())}"
            )
        base = at_scale.set_index("_task")["acc_mean_pct"] if not at_scale.empty else None
        description = f"lr_scale={scale:g}" if base is not None else None
    base_acc = base.reindex(oracle.index) if base is not None else None
    complete = oracle.notna() & fixed_acc.notna()
    if base_acc is not None:
        complete &= base_acc.notna()
    if not complete.any():
        raise ValueError(
            "scale_summary: no task has the oracle, the fixed scale and the baseline all measured"
        )
    o, f = float(oracle[complete].mean()), float(fixed_acc[complete].mean())
    b = float(base_acc[complete].mean()) if base_acc is not None else None
    share = None if b is None else (math.nan if math.isclose(o, b) else (f - b) / (o - b))
    return {
        "n_tasks": int(complete.sum()),
        "n_tasks_skipped": int((~complete).sum()),
        "oracle_acc_pct": o,
        "fixed_scale": float(fixed),
        "fixed_acc_pct": f,
        "best_scale_counts": {float(s): int(c) for s, c in sorted(counts.items())},
        "baseline": description,
        "baseline_acc_pct": b,
        "gain_share": share,
    }


def swap_average(
    table: pd.DataFrame,
    keys: Sequence[str] | None = None,
    values: Sequence[str] | None = None,
    dataset_col: str = "dataset",
    source_col: str = "source",
) -> pd.DataFrame:
    """Average source->target and target->source runs, as Soekhoe does with swapped class halves.

    Rows (dataset=A, source=B) and (dataset=B, source=A) with equal `keys` (default: every column
    that is not dataset/source or a value, e.g. condition and images_per_label) become one row with
    dataset/source in sorted order, each value the mean of the two directions (an `n` column is
    summed) and `swap_averaged` True. Rows without a partner pass through with `swap_averaged`
    False.
    Values default to the numeric columns that are not configuration (PARAM_COLS) or bool.
    """
    _require(table, (dataset_col, source_col), "swap_average")
    if values is None:
        values = [
            c
            for c in table.columns
            if c not in (dataset_col, source_col)
            and c not in PARAM_COLS
            and pd.api.types.is_numeric_dtype(table[c])
            and not pd.api.types.is_bool_dtype(table[c])
        ]
    if keys is None:
        keys = [
            c for c in table.columns if c not in (dataset_col, source_col, *values, "swap_averaged")
        ]
    t = table.reset_index(drop=True)
    lo, hi, forward, pairable = [], [], [], []
    for a, b in zip(t[dataset_col], t[source_col], strict=True):
        ok = not pd.isna(a) and not pd.isna(b) and str(a) != str(b)
        pairable.append(ok)
        lo.append(min(str(a), str(b)) if ok else None)
        hi.append(max(str(a), str(b)) if ok else None)
        forward.append(ok and str(a) < str(b))
    out: list[dict[str, Any]] = []
    t = t.assign(_lo=lo, _hi=hi, _forward=forward, _pairable=pairable)
    for _, group in t.groupby(["_lo", "_hi", *keys], dropna=False, sort=False):
        directions = set(group["_forward"])
        if bool(group["_pairable"].iloc[0]) and directions == {True, False}:
            row = {c: group[c].iloc[0] for c in keys}
            row[dataset_col], row[source_col] = group["_lo"].iloc[0], group["_hi"].iloc[0]
            per_dir = group.groupby("_forward")[list(values)]
            means = per_dir.mean().mean()
            for c in values:
                row[c] = float(group[c].sum()) if c == "n" else float(means[c])
            row["swap_averaged"] = True
            out.append(row)
        else:
            for _, r in group.iterrows():
                out.append(
                    {
                        **{c: r[c] for c in table.columns if c != "swap_averaged"},
                        "swap_averaged": False,
                    }
                )
    columns = [c for c in table.columns if c != "swap_averaged"] + ["swap_averaged"]
    result = pd.DataFrame(out, columns=columns)
    if "n" in values:
        result["n"] = result["n"].astype("int64")
    return _sorted(result, [dataset_col, source_col, *keys])
