"""The headline evaluation: does a one-shot prediction capture the gain of a full search?

On held-out tasks (leave one task out) it compares, with accuracies *measured* in the recorded grid:
(a) a fixed default configuration, (b) the single configuration that is best on average over the
training tasks, (c) the meta-model's one-shot prediction (snapped to the nearest configuration that
was run), and (d) the oracle: the best configuration of the grid for that task. Dube et al. found
(b) captured 16% of the gain from (a) to (d) over 70 tasks (79.7 vs 78.1 of 88.0).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from tunetl.meta.analysis import DEFAULT_METRIC, finished_trials
from tunetl.meta.regressor import describe_task, fit_meta_model, meta_dataset
from tunetl.params import param_distance

CONFIG_KEYS = ("inner_lr", "last_lr", "lr_scale", "frozen_depth")
TASK_COLS = ("dataset", "source", "images_per_label")


def _nearest(configs: pd.DataFrame, wanted: dict[str, Any], keys: list[str]) -> int:
    """Row of `configs` closest to `wanted` on the keys it gives (ties: first row)."""
    given = [k for k in keys if wanted.get(k) is not None]
    dist = [sum(param_distance(k, float(row[k]), float(wanted[k])) for k in given) for _, row in configs.iterrows()]
    return int(np.argmin(dist))


def one_shot_evaluation(
    frame: pd.DataFrame,
    default: dict[str, float] | None = None,
    metric: str = DEFAULT_METRIC,
    kind: str = "forest",
    hold_out_pair: bool = True,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Per held-out task accuracies (%) of default / best fixed / predicted / oracle, and their means.

    With `hold_out_pair`, every task of the same dataset/source pair (e.g. the same split at another
    images-per-label) leaves the training set too, so the model never saw the held-out data.
    """
    df = finished_trials(frame, metric)
    tc = [c for c in TASK_COLS if c in df.columns]
    keys = [k for k in CONFIG_KEYS if k in df.columns and df[k].nunique(dropna=True) > 1]
    if not keys:
        raise ValueError("the trials vary none of inner_lr, last_lr, lr_scale, frozen_depth: nothing to predict")
    acc = df.groupby([*tc, *keys], dropna=False)[metric].mean().mul(100).rename("acc").reset_index()
    acc["task"] = [describe_task(dict(zip(tc, row, strict=True))) for row in acc[tc].itertuples(index=False)]
    pair_cols = [c for c in ("dataset", "source") if c in tc] if hold_out_pair else ["task"]
    acc["pair"] = acc[pair_cols].astype(str).agg("|".join, axis=1)
    meta = meta_dataset(frame, metric)
    meta["pair"] = meta[pair_cols].astype(str).agg("|".join, axis=1)
    default = default or {"inner_lr": 0.01, "last_lr": 0.01, "lr_scale": 1.0, "frozen_depth": 0}
    rows = []
    for task in sorted(set(meta["task"])):
        own = acc[acc["task"] == task].reset_index(drop=True)
        pair = own["pair"].iloc[0] if not own.empty else None
        others = acc[acc["pair"] != pair]
        if own.empty or others.empty:
            continue
        mean_fixed = others.groupby(keys, dropna=False)["acc"].mean()
        fixed = dict(zip(keys, mean_fixed.idxmax() if len(keys) > 1 else [mean_fixed.idxmax()], strict=True))
        model = fit_meta_model(meta[meta["pair"] != pair], evaluate=False, kind=kind)
        feats = meta.loc[meta["task"] == task, [c for c in meta.columns if c.startswith("feature.")]].iloc[0]
        rec = model.predict(feats.to_dict())
        predicted = {k: getattr(rec, k, None) for k in keys}
        rows.append({
            "task": task,
            "default": own.loc[_nearest(own, default, keys), "acc"],
            "best_fixed": own.loc[_nearest(own, fixed, keys), "acc"],
            "predicted": own.loc[_nearest(own, predicted, keys), "acc"],
            "oracle": own["acc"].max(),
            "predicted_config": {k: predicted[k] for k in keys},
            "fixed_config": fixed,
        })
    table = pd.DataFrame(rows)
    summary = {k: float(table[k].mean()) for k in ("default", "best_fixed", "predicted", "oracle")}
    gain = summary["oracle"] - summary["default"]
    summary["n_tasks"] = float(len(table))
    summary["share_best_fixed"] = (summary["best_fixed"] - summary["default"]) / gain if gain > 0 else math.nan
    summary["share_predicted"] = (summary["predicted"] - summary["default"]) / gain if gain > 0 else math.nan
    return table, summary
