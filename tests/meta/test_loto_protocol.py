"""The leave-one-task-out protocol of the meta-model's evaluation (issue 17): a held-out task's own
rows and every task of its dataset/source pair stay out of what the model, the constant and the best
fixed configuration learn from. Four pairs (A..D) at 2 and 50 images per label; pair A's best IL is
1e-2, the others' 1e-4, so anything that saw A's other size would get A right."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.meta.test_regressor import _il_ll_trials
from tunetl.meta import evaluate, loto, regressor
from tunetl.meta.dataset import meta_dataset
from tunetl.meta.evaluate import held_out_tasks, quantity_errors
from tunetl.meta.loto import (
    conformal_quantile,
    fit_with_loto,
    held_out_training,
    leave_one_task_out,
    pair_of,
)
from tunetl.meta.predict import format_recommendation, recommend
from tunetl.meta.regressor import feature_importance

PAIRS = {"A": (0.1, 1e-2), "B": (0.9, 1e-4), "C": (0.9, 1e-4), "D": (0.9, 1e-4)}
SIZES = (2, 50)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    for name, (sim, alpha) in PAIRS.items():
        for ipl in SIZES:
            rows += _il_ll_trials(name, ipl, float(ipl), sim, {0.01: alpha, 0.1: alpha}, 0.01)
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def meta(frame: pd.DataFrame) -> pd.DataFrame:
    return meta_dataset(frame)


def _pair(task: str) -> str:
    return task.split(" ")[0]


def test_held_out_training_drops_the_pair_or_only_the_task(meta: pd.DataFrame) -> None:
    assert set(pair_of(meta)) == {f"{p}|src" for p in PAIRS}
    task = "A <- src @ 2 img/label"
    by_pair = set(held_out_training(meta, task, "pair")["task"])
    by_task = set(held_out_training(meta, task, "task")["task"])
    assert not {t for t in by_pair if _pair(t) == "A"}
    assert len(by_pair) == 6
    assert by_task == by_pair | {"A <- src @ 50 img/label"}
    with pytest.raises(ValueError, match="hold_out 'both' is not one of pair, task"):
        held_out_training(meta, task, "both")


def test_leave_one_task_out_never_trains_on_the_held_out_pair(
    meta: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[set[str]] = []
    real_fit = loto.fit_meta_model

    def recording_fit(train: pd.DataFrame, **kwargs: Any) -> regressor.MetaModel:
        seen.append(set(train["task"]))
        return real_fit(train, **kwargs)

    monkeypatch.setattr(loto, "fit_meta_model", recording_fit)
    leave_one_task_out(meta, features=["feature.similarity"], kind="knn")
    held = list(dict.fromkeys(meta["task"]))
    assert len(seen) == len(held) == 8
    for task, train in zip(held, seen, strict=True):
        assert task not in train
        assert all(_pair(t) != _pair(task) for t in train), (task, train)
        assert len(train) == 6


def test_pair_hold_out_removes_what_the_sibling_size_would_leak(meta: pd.DataFrame) -> None:
    # Only similarity as input: with the sibling size in training, knn copies its alpha exactly.
    leaky = leave_one_task_out(meta, features=["feature.similarity"], kind="knn", hold_out="task")
    honest = leave_one_task_out(meta, features=["feature.similarity"], kind="knn", hold_out="pair")
    assert leaky["alpha_log10_mae"] == pytest.approx(0.0)
    # A's 4 cases (2 sizes x 2 LL) are predicted from B..D's 1e-4: 2 decades off; B..D's 12 exact.
    assert honest["alpha_log10_mae"] == pytest.approx(4 * 2.0 / 16)
    assert honest["alpha_positive_n"] == 16
    assert honest["alpha_log10_mae_q80"] == pytest.approx(2.0)


def test_evaluation_learns_nothing_from_the_held_out_pair(frame: pd.DataFrame) -> None:
    held, keys = held_out_tasks(frame, kind="knn")
    assert keys == ["inner_lr", "last_lr"]
    assert len(held) == 8
    for h in held:
        for tasks in (set(h.train_meta["task"]), set(h.model.table["task"])):
            assert all(_pair(t) != _pair(h.task) for t in tasks), (h.task, tasks)
        assert set(h.own["task"]) == {h.task}
        assert h.fixed == {"inner_lr": 1e-4, "last_lr": 0.01}


def test_quantity_errors_against_constant_and_best_fixed(frame: pd.DataFrame, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[set[str]] = []
    real_fit = evaluate.fit_meta_model

    def recording_fit(train: pd.DataFrame, **kwargs: Any) -> regressor.MetaModel:
        seen.append(set(train["task"]))
        return real_fit(train, **kwargs)

    monkeypatch.setattr(evaluate, "fit_meta_model", recording_fit)
    table = quantity_errors(frame, kind="knn").set_index("quantity")
    assert len(seen) == 8 and all(len(s) == 6 for s in seen)
    assert list(table.index) == ["alpha", "alpha = 0", "alpha > 0", "last_lr"]
    assert table.loc["alpha", "n"] == 16 and table.loc["last_lr", "n"] == 8
    positive = table.loc["alpha > 0"]
    # constant: A's cases see mean log10 -4 (2 off); B's see 4 rows at -2 and 8 at -4, mean -10/3.
    assert positive["constant"] == pytest.approx((4 * 2.0 + 12 * (2 / 3)) / 16)
    # best fixed IL is 1e-4 for every held-out task: 2 decades off on A's 4 cases only.
    assert positive["best_fixed"] == pytest.approx(0.5)
    assert table.loc["alpha = 0", "meta_model"] == 1.0
    assert table.loc["last_lr", "meta_model"] == pytest.approx(0.0)
    assert table.attrs["alpha_floor"] == pytest.approx(1e-5)


def test_conformal_quantile() -> None:
    assert conformal_quantile([0.1, -0.5, 0.2, 0.3, 0.4, 0.05, 0.6, 0.7, 0.15]) == pytest.approx(0.6)
    assert math.isinf(conformal_quantile([0.1, 0.2]))


def test_prediction_has_intervals_agreement_and_importance(meta: pd.DataFrame) -> None:
    model = fit_with_loto(meta)
    point = {c: float(meta[c].iloc[0]) for c in model.features}
    rec = model.predict(point)
    assert rec.inner_lr is not None and rec.inner_lr > 0
    ranges = {how: (lo, hi) for lo, hi, how in rec.intervals["inner_lr"]}
    lo, hi = ranges["trees 10-90%"]
    # trees predict tested alphas (1e-4..1e-2) or means of them; the forest's answer is their mean
    assert 1e-4 * (1 - 1e-9) <= lo <= hi <= 1e-2 * (1 + 1e-9)
    q = model.loto["alpha_log10_mae_q80"]
    lo, hi = ranges["conformal 80% (leave-one-task-out)"]
    assert math.log10(hi) - math.log10(lo) == pytest.approx(2 * q)
    assert 0.5 <= rec.agreement["inner_lr > 0"] <= 1.0
    result = recommend(model, point)
    assert result["uncertainty"]["last_lr"][0]["how"].startswith("conformal")
    assert "conformal 80%" in format_recommendation(result)
    importance = feature_importance(model)
    assert set(importance.columns) >= {"alpha_log", "last_lr_log"}
    assert np.allclose(importance["alpha_log"].sum(), 1.0)
    assert importance["alpha_log"].idxmax() in ("feature.similarity", "feature.images_per_label")


def test_meta_eval_prints_the_headline_section(frame: pd.DataFrame) -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "meta_eval.py"
    spec = importlib.util.spec_from_file_location("meta_eval", path)
    assert spec is not None and spec.loader is not None
    meta_eval = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(meta_eval)
    text = meta_eval.headline(frame, kind="knn", compare_kinds=False)
    assert "| **mean over 8 tasks** |" in text
    assert "| Dube et al. 2018, single best fixed scale (70 tasks) | 16% |" in text
    assert "| alpha > 0 | mean abs log10 error | 16 |" in text
    assert "| feature.similarity | - | - | - |" in text  # knn has no importances; alpha_zero is constant
    assert "Feature importance of the knn meta-model" in text


def test_meta_mnist_experiment_has_the_issues_shape() -> None:
    from pathlib import Path

    from tunetl.config import load_experiment

    exp = load_experiment(Path(__file__).resolve().parents[2] / "experiments" / "meta_mnist.yaml")
    assert exp.tasks is not None
    space = exp.search_space
    sizes = space["images_per_label"]["grid"]
    assert {t.dataset.builtin for t in exp.tasks} == {"mnist5k", "digits"}
    assert min(sizes) <= 2 and max(sizes) >= 100
    assert len(exp.tasks) * len(sizes) >= 24
    # every task's source is trained on classes disjoint from its target's
    for t in exp.tasks:
        assert t.source is not None and t.source.train_on is not None
        assert t.source.train_on.builtin == t.dataset.builtin
        assert not set(t.source.train_on.classes or []) & set(t.dataset.classes or [])
    assert exp.scheduler.type == "asha" and set(exp.scheduler.group_by) == {"images_per_label", "last_lr"}
    assert exp.training.feature_cache == "node" and 0.0 in space["inner_lr"]["grid"]
    assert len(space["last_lr"]["grid"]) >= 2


def test_evaluation_with_chosen_features(frame: pd.DataFrame) -> None:
    # similarity alone: A's cases are 2 decades off (nothing like A in training), B..D's exact
    table = quantity_errors(frame, kind="knn", features=["feature.similarity"]).set_index("quantity")
    assert table.loc["alpha > 0", "meta_model"] == pytest.approx(4 * 2.0 / 16)
    with pytest.raises(ValueError, match="feature.bogus"):
        quantity_errors(frame, kind="knn", features=["feature.bogus"])
