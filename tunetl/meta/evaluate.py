"""The headline evaluation: does a one-shot prediction capture the gain of a full search?

On held-out tasks (leave one task out) it compares, with accuracies *measured* in the recorded grid:
(a) a fixed default configuration, (b) the single configuration that is best on average over the
training tasks, (c) the meta-model's one-shot prediction (snapped to the nearest configuration that
was run), and (d) the oracle: the best configuration of the grid for that task. Dube et al. found
(b) captured 16% of the gain from (a) to (d) over 70 tasks (79.7 vs 78.1 of 88.0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tunetl.meta.analysis import DEFAULT_METRIC, finished_trials
from tunetl.meta.dataset import LL_INPUT, describe_task, meta_dataset, task_table
from tunetl.meta.loto import held_out_training
from tunetl.meta.regressor import MetaModel, fit_meta_model
from tunetl.params import param_distance

CONFIG_KEYS = ("inner_lr", "last_lr", "lr_scale", "frozen_depth")
TASK_COLS = ("dataset", "source", "images_per_label")


def _nearest(configs: pd.DataFrame, wanted: dict[str, Any], keys: list[str]) -> int:
    """Row of `configs` closest to `wanted` on the keys it gives (ties: first row)."""
    given = [k for k in keys if wanted.get(k) is not None]
    dist = [sum(param_distance(k, float(row[k]), float(wanted[k])) for k in given) for _, row in configs.iterrows()]
    return int(np.argmin(dist))


@dataclass
class HeldOut:
    """One held-out task: its grid accuracies, the best fixed configuration of the training tasks,
    the meta-model fitted without it (and without its pair), its features and training meta rows."""

    task: str
    own: pd.DataFrame
    fixed: dict[str, Any]
    model: MetaModel
    features: dict[str, Any]
    train_meta: pd.DataFrame
    test_meta: pd.DataFrame


def held_out_tasks(
    frame: pd.DataFrame,
    metric: str = DEFAULT_METRIC,
    kind: str = "forest",
    hold_out_pair: bool = True,
    features: list[str] | None = None,
) -> tuple[list[HeldOut], list[str]]:
    """The leave-one-task-out protocol, once for every consumer: per task, what may be learned from
    (every other task; with `hold_out_pair` not its dataset/source pair either) and the varied keys."""
    df = finished_trials(frame, metric)
    tc = [c for c in TASK_COLS if c in df.columns]
    keys = [k for k in CONFIG_KEYS if k in df.columns and df[k].nunique(dropna=True) > 1]
    if not keys:
        raise ValueError("the trials vary none of inner_lr, last_lr, lr_scale, frozen_depth: nothing to predict")
    acc = df.groupby([*tc, *keys], dropna=False)[metric].mean().mul(100).rename("acc").reset_index()
    acc["task"] = [describe_task(dict(zip(tc, row, strict=True))) for row in acc[tc].itertuples(index=False)]
    meta = meta_dataset(frame, metric)
    hold_out = "pair" if hold_out_pair else "task"
    out = []
    for task in sorted(set(meta["task"])):
        own = acc[acc["task"] == task].reset_index(drop=True)
        train_meta = held_out_training(meta, task, hold_out)
        others = acc[acc["task"].isin(set(train_meta["task"]))]
        if own.empty or others.empty:
            continue
        mean_fixed = others.groupby(keys, dropna=False)["acc"].mean()
        best = mean_fixed.idxmax()
        fixed = dict(zip(keys, best if len(keys) > 1 else [best], strict=True))
        test_meta = meta[meta["task"] == task]
        feats = test_meta[[c for c in meta.columns if c.startswith("feature.")]].iloc[0].to_dict()
        model = fit_meta_model(train_meta, features=features, kind=kind)
        out.append(HeldOut(task, own, fixed, model, feats, train_meta, test_meta))
    return out, keys


def one_shot_evaluation(
    frame: pd.DataFrame,
    default: dict[str, float] | None = None,
    metric: str = DEFAULT_METRIC,
    kind: str = "forest",
    hold_out_pair: bool = True,
    features: list[str] | None = None,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Per held-out task accuracies (%) of default / best fixed / predicted / oracle, and their means.

    With `hold_out_pair`, every task of the same dataset/source pair (e.g. the same split at another
    images-per-label) leaves the training set too, so the model never saw the held-out data.
    `features`: the model's inputs (default: every usable `feature.*`).
    """
    held, keys = held_out_tasks(frame, metric, kind, hold_out_pair, features)
    default = default or {"inner_lr": 0.01, "last_lr": 0.01, "lr_scale": 1.0, "frozen_depth": 0}
    rows = []
    for h in held:
        rec = h.model.predict(h.features)
        predicted = {k: getattr(rec, k, None) for k in keys}
        own = h.own
        rows.append({
            "task": h.task,
            "default": own.loc[_nearest(own, default, keys), "acc"],
            "best_fixed": own.loc[_nearest(own, h.fixed, keys), "acc"],
            "predicted": own.loc[_nearest(own, predicted, keys), "acc"],
            "oracle": own["acc"].max(),
            "predicted_config": {k: predicted[k] for k in keys},
            "fixed_config": h.fixed,
        })
    table = pd.DataFrame(rows)
    summary = {k: float(table[k].mean()) for k in ("default", "best_fixed", "predicted", "oracle")}
    gain = summary["oracle"] - summary["default"]
    summary["n_tasks"] = float(len(table))
    summary["share_best_fixed"] = (summary["best_fixed"] - summary["default"]) / gain if gain > 0 else math.nan
    summary["share_predicted"] = (summary["predicted"] - summary["default"]) / gain if gain > 0 else math.nan
    return table, summary


def _log(value: float, floor: float) -> float:
    return math.log10(max(float(value), floor))


def quantity_errors(
    frame: pd.DataFrame,
    metric: str = DEFAULT_METRIC,
    kind: str = "forest",
    hold_out_pair: bool = True,
    features: list[str] | None = None,
) -> pd.DataFrame:
    """Error of each predicted quantity on the held-out tasks, for the meta-model, a constant (the
    training tasks' mean in log10, or their majority) and the best fixed configuration's value.

    Rows: `alpha` (best IL at each tested LL; |log10 error| with IL = 0 counted as one decade below
    the smallest positive IL tried, so that every predictor is scored on every case), `alpha = 0`
    (accuracy of zero vs positive), `alpha > 0` (|log10 error| on the cases whose best IL is
    positive; the meta-model's log part, a fixed IL of 0 counted as the floor), `last_lr`,
    `lr_scale` (|log10 error|), `frozen_depth` (accuracy), where the trials varied them.
    """
    held, keys = held_out_tasks(frame, metric, kind, hold_out_pair, features)
    df = finished_trials(frame, metric)
    positive = pd.to_numeric(df.get("inner_lr", pd.Series(dtype=float)), errors="coerce")
    positive = positive[positive > 0]
    floor = float(positive.min()) / 10 if len(positive) else 1e-6
    cases: dict[str, list[tuple[float, float, float]]] = {}

    def add(name: str, model: float, const: float, fixed: float) -> None:
        cases.setdefault(name, []).append((model, const, fixed))

    for h in held:
        values = h.model.inputs_of(h.features)
        alpha_rows = h.test_meta[np.isfinite(pd.to_numeric(h.test_meta["alpha"], errors="coerce"))]
        train_alpha = pd.to_numeric(h.train_meta["alpha"], errors="coerce").dropna()
        if len(alpha_rows) and len(train_alpha) and "inner_lr" in keys:
            const_log = float(np.mean([_log(a, floor) for a in train_alpha]))
            const_zero = float((train_alpha == 0).mean()) > 0.5
            pos = train_alpha[train_alpha > 0]
            const_pos = float(np.log10(pos).mean()) if len(pos) else math.log10(floor)
            fixed_il = float(h.fixed["inner_lr"])
            for row in alpha_rows.itertuples(index=False):
                truth = float(row.alpha)
                pred = h.model.alpha_at(values, float(row.last_lr))
                if pred is None:
                    continue
                t = _log(truth, floor)
                add("alpha", abs(_log(pred, floor) - t), abs(const_log - t), abs(_log(fixed_il, floor) - t))
                add("alpha = 0", float((pred == 0) == (truth == 0)), float(const_zero == (truth == 0)),
                    float((fixed_il == 0) == (truth == 0)))
                log_part = h.model.part_value("alpha_log", {**values, LL_INPUT: math.log10(float(row.last_lr))})
                if truth > 0 and log_part is not None:
                    add("alpha > 0", abs(log_part - t), abs(const_pos - t), abs(_log(fixed_il, floor) - t))
        for name, col, key, rec_key in (
            ("last_lr", "best_last_lr", "last_lr", "last_lr"),
            ("lr_scale", "best_lr_scale", "lr_scale", "lr_scale"),
            ("frozen_depth", "best_frozen_depth", "frozen_depth", "frozen_depth"),
        ):
            truth = float(pd.to_numeric(h.test_meta[col], errors="coerce").iloc[0])
            train = task_table(h.train_meta)[col]
            train = pd.to_numeric(train, errors="coerce").dropna()
            rec = getattr(h.model.predict(h.features), rec_key)
            if not math.isfinite(truth) or not len(train) or rec is None or key not in keys:
                continue
            if name == "frozen_depth":
                majority = float(train.mode().min())
                add(name, float(round(rec) == truth), float(majority == truth), float(float(h.fixed[key]) == truth))
            else:
                t = math.log10(truth)
                add(name, abs(math.log10(rec) - t), abs(float(np.log10(train).mean()) - t),
                    abs(math.log10(float(h.fixed[key])) - t))
    rows = []
    for name, values_ in cases.items():
        arr = np.asarray(values_, dtype="float64")
        higher_better = name in ("alpha = 0", "frozen_depth")
        rows.append({
            "quantity": name,
            "error": "accuracy" if higher_better else "mean abs log10 error",
            "n": len(arr),
            "meta_model": float(arr[:, 0].mean()),
            "constant": float(arr[:, 1].mean()),
            "best_fixed": float(arr[:, 2].mean()),
        })
    table = pd.DataFrame(rows, columns=["quantity", "error", "n", "meta_model", "constant", "best_fixed"])
    table.attrs["alpha_floor"] = floor
    return table
