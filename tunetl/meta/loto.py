"""Leave-one-task-out: how well a meta-model generalises to a task it has not seen, against constants.

Each task is held out in turn (with `hold_out="pair"`, every task of its dataset/source pair too, since
the same images at another images-per-label are not new data), a model is fitted on the rest and scored
on it. The residuals also give `predict`'s conformal intervals (`fit_with_loto`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tunetl.meta.dataset import LL_INPUT, check_meta, default_features, part_rows, task_table
from tunetl.meta.parts import DEFAULT_KIND, constant_answer
from tunetl.meta.regressor import COVERAGE, MetaModel, fit_meta_model


def fit_with_loto(
    meta_df: pd.DataFrame,
    features: Sequence[str] | None = None,
    kind: str = DEFAULT_KIND,
    description: str | None = None,
    hold_out: str = "pair",
) -> MetaModel:
    """`fit_meta_model` on every task, with its leave-one-task-out errors recorded (`model.loto`), which
    `predict` reports and turns into intervals."""
    model = fit_meta_model(meta_df, features=features, kind=kind, description=description)
    model.loto = leave_one_task_out(meta_df, features=model.features, kind=kind, hold_out=hold_out)
    return model


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



#: LOTO error keys -> the key counting their cases.
_LOTO_COUNTS = {
    "alpha_zero_accuracy": "alpha_n",
    "alpha_log10_mae": "alpha_positive_n",
    "last_lr_log10_mae": "last_lr_n",
    "lr_scale_log10_mae": "lr_scale_n",
    "frozen_depth_accuracy": "frozen_depth_n",
}


@dataclass
class _Tally:
    """Per error key: the held-out cases' errors and the constant baseline's on the same cases."""

    errors: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in _LOTO_COUNTS})
    baselines: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in _LOTO_COUNTS})

    def add(self, key: str, error: float, baseline: float) -> None:
        self.errors[key].append(error)
        self.baselines[key].append(baseline)


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


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
    check_meta(meta_df)
    chosen = list(features) if features is not None else default_features(meta_df)
    tally = _Tally()
    names = list(dict.fromkeys(meta_df["task"]))
    for task in names:
        train = held_out_training(meta_df, task, hold_out)
        test = meta_df[meta_df["task"] == task]
        if train.empty:
            continue
        try:
            model = fit_meta_model(train, features=chosen, kind=kind)
        except ValueError:
            continue
        _score_alpha(model, train, test, tally)
        _score_task(model, train, test, tally)
    out: dict[str, float] = {"n_tasks": float(len(names))}
    for key, values in tally.errors.items():
        out[key] = _mean(values)
        out[f"{key}_baseline"] = _mean(tally.baselines[key])
        out[_LOTO_COUNTS[key]] = float(len(values))
        if key.endswith("_mae"):
            out[f"{key}_q80"] = conformal_quantile(values) if values else math.nan
    return out


def _score_alpha(model: MetaModel, train: pd.DataFrame, test: pd.DataFrame, tally: _Tally) -> None:
    """alpha cases of the held-out task, each at its own LL."""
    _, zero_train = part_rows(train, "alpha_zero")
    _, log_train = part_rows(train, "alpha_log")
    rows, zero_true = part_rows(test, "alpha_zero")
    if not len(zero_train):
        return
    values = model.inputs_of(task_table(test).iloc[0].to_dict())
    majority = constant_answer(zero_train, classify=True)
    for (_, row), is_zero in zip(rows.iterrows(), zero_true, strict=True):
        point = {**values, LL_INPUT: math.log10(float(row["last_lr"]))}
        tally.add("alpha_zero_accuracy", float(bool(model.part_value("alpha_zero", point)) == is_zero),
                  float(bool(majority) == is_zero))
        log_pred = model.part_value("alpha_log", point)
        if not is_zero and log_pred is not None and len(log_train):
            truth = math.log10(float(row["alpha"]))
            tally.add("alpha_log10_mae", abs(log_pred - truth), abs(float(log_train.mean()) - truth))


def _score_task(model: MetaModel, train: pd.DataFrame, test: pd.DataFrame, tally: _Tally) -> None:
    """Task-level targets of the held-out task."""
    values = model.inputs_of(task_table(test).iloc[0].to_dict())
    for part, key in (
        ("last_lr_log", "last_lr_log10_mae"),
        ("lr_scale_log", "lr_scale_log10_mae"),
        ("frozen_depth", "frozen_depth_accuracy"),
    ):
        _, y_test = part_rows(test, part)
        _, y_train = part_rows(train, part)
        pred = model.part_value(part, values)
        if not len(y_test) or pred is None:
            continue
        truth = float(y_test[0])
        if key.endswith("accuracy"):
            tally.add(key, float(round(pred) == round(truth)),
                      float(constant_answer(y_train, classify=True) == truth))
        else:
            tally.add(key, abs(pred - truth), abs(float(y_train.mean()) - truth))
