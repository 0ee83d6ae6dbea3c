"""The seeds' analyses on hand-made trials frames whose answers are worked out in each test."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tunetl.meta.analysis import (
    alpha_beta,
    condition_names,
    condition_pivot,
    condition_table,
    finished_trials,
    freeze_heuristic,
    scale_summary,
    scale_table,
    swap_average,
)


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Trials frame rows; status FINISHED unless a row says otherwise."""
    return pd.DataFrame([{"status": "FINISHED", **r} for r in rows])


def _seeds(values: tuple[float, ...], **params: Any) -> list[dict[str, Any]]:
    return [{**params, "seed": i, "best_val_acc": v} for i, v in enumerate(values)]


# --- alpha / beta (Dube eq. 1) -------------------------------------------------------------------


@pytest.fixture()
def il_ll_frame() -> pd.DataFrame:
    task = {"dataset": "flowers", "source": "plants", "images_per_label": 10}
    rows = [
        # LL = 0.01: IL means 0.55, 0.60, 0.55, 0.40. IL 1e-3 has the best single seed (0.80)
        # but not the best mean: alpha must come from seed means.
        *_seeds((0.50, 0.60), **task, last_lr=0.01, inner_lr=0.0),
        *_seeds((0.70, 0.50), **task, last_lr=0.01, inner_lr=1e-4),
        *_seeds((0.80, 0.30), **task, last_lr=0.01, inner_lr=1e-3),
        *_seeds((0.40, 0.40), **task, last_lr=0.01, inner_lr=1e-2),
        # LL = 0.1: IL 0 and IL 1e-3 tie at 0.60 -> the smaller, 0.0; min 0.50 at IL 0.1.
        *_seeds((0.60, 0.60), **task, last_lr=0.1, inner_lr=0.0),
        *_seeds((0.70, 0.50), **task, last_lr=0.1, inner_lr=1e-3),
        *_seeds((0.50, 0.50), **task, last_lr=0.1, inner_lr=0.1),
        # ignored: a failed trial with a high score, a finished one without a metric
        {
            **task,
            "last_lr": 0.1,
            "inner_lr": 1e-2,
            "seed": 0,
            "best_val_acc": 0.99,
            "status": "FAILED",
        },
        {**task, "last_lr": 0.1, "inner_lr": 5e-2, "seed": 0, "best_val_acc": math.nan},
        # second task without a source, all images: min 0 -> beta inf
        {
            "dataset": "digits",
            "source": None,
            "images_per_label": "all",
            "last_lr": 0.01,
            "inner_lr": 0.0,
            "seed": 0,
            "best_val_acc": 0.9,
        },
        {
            "dataset": "digits",
            "source": None,
            "images_per_label": "all",
            "last_lr": 0.01,
            "inner_lr": 0.01,
            "seed": 0,
            "best_val_acc": 0.0,
        },
    ]
    return pd.DataFrame([{"status": "FINISHED", **r} for r in rows])


def test_alpha_beta_known_values(il_ll_frame: pd.DataFrame) -> None:
    table = alpha_beta(il_ll_frame)
    assert list(table.columns) == [
        "dataset",
        "source",
        "images_per_label",
        "last_lr",
        "alpha",
        "max_acc",
        "min_acc",
        "beta",
        "n_il",
    ]
    assert table["dataset"].tolist() == ["digits", "flowers", "flowers"]
    digits, ll001, ll01 = (table.iloc[i] for i in range(3))
    assert pd.isna(digits["source"]) and digits["images_per_label"] == -1
    assert digits["alpha"] == 0.0 and digits["beta"] == math.inf
    assert ll001["last_lr"] == 0.01 and ll001["alpha"] == 1e-4
    assert ll001["max_acc"] == pytest.approx(0.60) and ll001["min_acc"] == pytest.approx(0.40)
    assert ll001["beta"] == pytest.approx((0.60 - 0.40) / 0.40 * 100)
    assert ll001["n_il"] == 4
    assert ll01["alpha"] == 0.0 and ll01["n_il"] == 3
    assert ll01["beta"] == pytest.approx((0.60 - 0.50) / 0.50 * 100)


def test_alpha_beta_falls_back_to_base_lr_and_custom_task_cols(il_ll_frame: pd.DataFrame) -> None:
    frame = il_ll_frame[il_ll_frame["dataset"] == "flowers"].copy()
    frame["base_lr"] = frame["inner_lr"]
    frame.loc[frame["inner_lr"] == 1e-4, "inner_lr"] = np.nan
    table = alpha_beta(frame, task_cols=["dataset"])
    assert table["alpha"].tolist() == [1e-4, 0.0]
    assert list(table.columns[:2]) == ["dataset", "last_lr"]


def test_analysis_errors_name_the_problem(il_ll_frame: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="'val_top5'"):
        alpha_beta(il_ll_frame, metric="val_top5")
    with pytest.raises(ValueError, match="no FINISHED trial"):
        alpha_beta(il_ll_frame.assign(status="FAILED"))
    with pytest.raises(ValueError, match=r"\['backbone'\]"):
        alpha_beta(il_ll_frame, task_cols=["backbone"])
    with pytest.raises(ValueError, match="'fifty'"):
        finished_trials(il_ll_frame.assign(images_per_label="fifty"))


# --- conditions ----------------------------------------------------------------------------------


def test_condition_names_given_and_derived() -> None:
    frame = pd.DataFrame(
        {
            "condition": [None, None, None, None, None, None, "mine"],
            "transfer_depth": [0, np.nan, 2, 4, 2, np.nan, 1],
            "frozen_depth": [0, 0, 2, 0, 0, 1, 1],
        }
    )
    assert condition_names(frame).tolist() == [
        "base",
        "FTall",
        "S2T",
        "FTall",
        "T2F0",
        "S1T",
        "mine",
    ]


def test_condition_table_and_pivot() -> None:
    frame = _frame(
        [
            *_seeds((0.50, 0.70), images_per_label=5, transfer_depth=0, frozen_depth=0),
            *_seeds((0.60, 0.80), images_per_label=5, transfer_depth=4, frozen_depth=0),
            *_seeds((0.90,), images_per_label=5, transfer_depth=2, frozen_depth=2),
            *_seeds((0.80, 0.90), images_per_label="all", transfer_depth=0, frozen_depth=0),
            *_seeds((0.95, 0.97), images_per_label="all", transfer_depth=4, frozen_depth=0),
            {
                "images_per_label": 5,
                "transfer_depth": 2,
                "frozen_depth": 2,
                "seed": 1,
                "best_val_acc": 0.1,
                "status": "FAILED",
            },
        ]
    )
    table = condition_table(frame)
    assert table["condition"].tolist() == ["base", "FTall", "S2T", "base", "FTall"]
    assert table["images_per_label"].tolist() == [5, 5, 5, -1, -1]
    assert table["acc_mean_pct"].tolist() == pytest.approx([60.0, 70.0, 90.0, 85.0, 96.0])
    assert table["acc_std_pct"].iloc[0] == pytest.approx(np.std([50, 70], ddof=1))
    assert math.isnan(table["acc_std_pct"].iloc[2])
    assert table["n"].tolist() == [2, 2, 1, 2, 2]

    wide = condition_pivot(table)
    assert list(wide.columns) == ["base", "FTall", "S2T"]
    assert list(wide.index) == ["5", "all"]
    assert wide.loc["5", "S2T"] == 90.0 and math.isnan(wide.loc["all", "S2T"])


# --- Soekhoe's freezing heuristic -----------------------------------------------------------------


def _depth_rows(size: Any, accs: tuple[float, ...]) -> list[dict[str, Any]]:
    """Two seeds (acc +- 0.01) per frozen depth 0, 1, 2 at one size."""
    rows: list[dict[str, Any]] = []
    for depth, acc in enumerate(accs):
        rows += _seeds(
            (acc - 0.01, acc + 0.01), images_per_label=size, transfer_depth=4, frozen_depth=depth
        )
    return rows


def test_freeze_heuristic_known_rule() -> None:
    frame = _frame(
        [
            *_depth_rows(5, (0.60, 0.70, 0.72)),  # best depth 2: wins
            *_depth_rows(10, (0.70, 0.75, 0.74)),  # best depth 1: wins
            *_depth_rows(20, (0.80, 0.78, 0.79)),  # FTall best: an exception below n
            *_depth_rows(50, (0.85, 0.84, 0.86)),  # best depth 2: wins, the largest such size
            *_depth_rows(100, (0.90, 0.88, 0.89)),  # FTall best
            # scratch rows are not FTall: with them, FTall at 100 would average above 0.90
            *_seeds((0.99, 0.99), images_per_label=100, transfer_depth=0, frozen_depth=0),
        ]
    )
    result = freeze_heuristic(frame)
    assert (result["l"], result["n"], result["exceptions"]) == (2, 50, [20])
    assert (
        result["rule"]
        == "freeze the first 2 stages up to 50 images per label; above that fine-tune all"
    )
    table = result["table"]
    assert table["images_per_label"].tolist() == [5, 10, 20, 50, 100]
    assert table["best_frozen_depth"].tolist() == [2, 1, 0, 2, 0]
    assert table["freezing_wins"].tolist() == [True, True, False, True, False]
    assert table["ftall_pct"].tolist() == pytest.approx([60, 70, 80, 85, 90])
    assert table["gain_pct"].iloc[0] == pytest.approx(12.0)


def test_freeze_heuristic_ties_go_to_less_freezing() -> None:
    frame = _frame(
        [
            *_depth_rows(5, (0.70, 0.80, 0.60)),  # depth 1 wins
            *_depth_rows(10, (0.70, 0.60, 0.80)),  # depth 2 wins: 1 and 2 win once each -> l = 1
            *_depth_rows("all", (0.90, 0.90, 0.85)),  # FTall ties depth 1 -> FTall, no win
        ]
    )
    result = freeze_heuristic(frame)
    assert (result["l"], result["n"]) == (1, 10)
    assert result["rule"].startswith("freeze the first stage up to 10 images per label")


def test_freeze_heuristic_every_size_and_never() -> None:
    always = freeze_heuristic(
        _frame([*_depth_rows(5, (0.5, 0.6, 0.5)), *_depth_rows("all", (0.5, 0.6, 0.5))])
    )
    assert always["n"] == -1 and always["exceptions"] == []
    assert always["rule"] == "freeze the first stage at every size tested, including all images"
    never = freeze_heuristic(
        _frame([*_depth_rows(5, (0.7, 0.6, 0.5)), *_depth_rows(50, (0.9, 0.6, 0.5))])
    )
    assert never["l"] is None and never["n"] is None
    assert never["rule"].startswith("no freezing helps")


# --- graduated scales (Dube §4.3) -----------------------------------------------------------------


@pytest.fixture()
def scale_frame() -> pd.DataFrame:
    sweep = {"a": (0.80, 0.70, 0.60), "b": (0.70, 0.75, 0.90), "c": (0.60, 0.50, 0.55)}
    rows: list[dict[str, Any]] = []
    for dataset, accs in sweep.items():
        for scale, acc in zip((0.25, 1.0, 4.0), accs, strict=True):
            rows += _seeds((acc - 0.02, acc + 0.02), dataset=dataset, inner_lr=1e-3, lr_scale=scale)
    baseline = {"a": 0.95, "b": 0.60, "c": 0.40}  # IL = 0 rows, also at lr_scale 1
    for dataset, acc in baseline.items():
        rows += _seeds((acc,), dataset=dataset, inner_lr=0.0, lr_scale=1.0)
    return _frame(rows)


def test_scale_table_best_per_task(scale_frame: pd.DataFrame) -> None:
    table = scale_table(scale_frame, baseline={"inner_lr": 0.0})
    best = table[table["best"]]
    assert best["dataset"].tolist() == ["a", "b", "c"]
    assert best["lr_scale"].tolist() == [0.25, 4.0, 0.25]
    assert table["n"].unique().tolist() == [2]
    assert table.loc[
        (table["dataset"] == "a") & (table["lr_scale"] == 1.0), "acc_mean_pct"
    ].item() == pytest.approx(70.0)


def test_scale_summary_against_scale_one_and_against_a_config(scale_frame: pd.DataFrame) -> None:
    oracle, fixed = (80 + 90 + 60) / 3, (80 + 70 + 60) / 3
    at_one = scale_summary(scale_frame[scale_frame["inner_lr"] > 0])
    assert at_one["fixed_scale"] == 0.25 and at_one["best_scale_counts"] == {0.25: 2, 4.0: 1}
    assert at_one["oracle_acc_pct"] == pytest.approx(oracle)
    assert at_one["fixed_acc_pct"] == pytest.approx(fixed)
    base = (70 + 75 + 50) / 3
    assert at_one["baseline"] == "lr_scale=1" and at_one["baseline_acc_pct"] == pytest.approx(base)
    assert at_one["gain_share"] == pytest.approx((fixed - base) / (oracle - base))
    assert at_one["n_tasks"] == 3 and at_one["n_tasks_skipped"] == 0

    config = scale_summary(scale_frame, baseline={"inner_lr": 0.0})
    base = (95 + 60 + 40) / 3
    assert config["baseline_acc_pct"] == pytest.approx(base)
    assert config["oracle_acc_pct"] == pytest.approx(oracle)
    assert config["gain_share"] == pytest.approx((fixed - base) / (oracle - base))


def test_scale_ties_and_missing_baseline_scale() -> None:
    frame = _frame(
        [
            *_seeds((0.7,), dataset="a", lr_scale=0.5),
            *_seeds((0.7,), dataset="a", lr_scale=2.0),
            *_seeds((0.6,), dataset="b", lr_scale=0.5),
            *_seeds((0.8,), dataset="b", lr_scale=2.0),
            *_seeds((0.9,), dataset="c", lr_scale=0.5),
            *_seeds((0.5,), dataset="c", lr_scale=2.0),
        ]
    )
    table = scale_table(frame)
    assert table.loc[table["best"], "lr_scale"].tolist() == [0.5, 2.0, 0.5]
    # 0.5 best twice (a by the tie rule, c); no 1.0 scale -> no baseline
    summary = scale_summary(frame)
    assert summary["fixed_scale"] == 0.5 and summary["baseline_acc_pct"] is None
    assert summary["gain_share"] is None
    with pytest.raises(ValueError, match=r"baseline_scale=1\.5 was not run"):
        scale_summary(frame, baseline_scale=1.5)
    # counts tie (2.0 best for a, b; 0.5 for c and d): higher fixed accuracy wins
    frame2 = _frame(
        [
            *_seeds((0.6,), dataset="a", lr_scale=0.5),
            *_seeds((0.7,), dataset="a", lr_scale=2.0),
            *_seeds((0.6,), dataset="b", lr_scale=0.5),
            *_seeds((0.7,), dataset="b", lr_scale=2.0),
            *_seeds((0.9,), dataset="c", lr_scale=0.5),
            *_seeds((0.1,), dataset="c", lr_scale=2.0),
            *_seeds((0.9,), dataset="d", lr_scale=0.5),
            *_seeds((0.1,), dataset="d", lr_scale=2.0),
        ]
    )
    assert scale_summary(frame2)["fixed_scale"] == 0.5


# --- source/target swap ---------------------------------------------------------------------------


def test_swap_average_pairs_directions_and_passes_the_rest() -> None:
    table = pd.DataFrame(
        [
            {
                "dataset": "B",
                "source": "A",
                "images_per_label": 5,
                "condition": "FTall",
                "acc_mean_pct": 60.0,
                "n": 2,
            },
            {
                "dataset": "A",
                "source": "B",
                "images_per_label": 5,
                "condition": "FTall",
                "acc_mean_pct": 80.0,
                "n": 3,
            },
            {
                "dataset": "A",
                "source": "B",
                "images_per_label": 50,
                "condition": "FTall",
                "acc_mean_pct": 90.0,
                "n": 3,
            },
            {
                "dataset": "B",
                "source": "A",
                "images_per_label": 50,
                "condition": "FTall",
                "acc_mean_pct": 70.0,
                "n": 3,
            },
            {
                "dataset": "A",
                "source": "B",
                "images_per_label": 5,
                "condition": "S1T",
                "acc_mean_pct": 85.0,
                "n": 3,
            },
            {
                "dataset": "C",
                "source": None,
                "images_per_label": 5,
                "condition": "FTall",
                "acc_mean_pct": 50.0,
                "n": 1,
            },
        ]
    )
    out = swap_average(table)
    assert list(out.columns) == [*table.columns, "swap_averaged"]
    paired = out[out["swap_averaged"]]
    assert paired[["dataset", "source"]].drop_duplicates().values.tolist() == [["A", "B"]]
    assert paired["images_per_label"].tolist() == [5, 50]
    assert paired["acc_mean_pct"].tolist() == pytest.approx([70.0, 80.0])
    assert paired["n"].tolist() == [5, 6]
    alone = out[~out["swap_averaged"]]
    assert alone["condition"].tolist() == ["S1T", "FTall"]
    assert alone["acc_mean_pct"].tolist() == [85.0, 50.0]
    assert len(out) == 4


def test_swap_average_feeds_condition_pivot() -> None:
    frame = _frame(
        [
            *_seeds((0.6,), dataset="A", source="B", images_per_label=5, condition="FTall"),
            *_seeds((0.8,), dataset="B", source="A", images_per_label=5, condition="FTall"),
            *_seeds((0.9,), dataset="A", source="B", images_per_label=5, condition="S1T"),
            *_seeds((0.7,), dataset="B", source="A", images_per_label=5, condition="S1T"),
        ]
    )
    wide = condition_pivot(swap_average(condition_table(frame)))
    assert list(wide.index) == ["5"]
    assert wide.loc["5"].tolist() == pytest.approx([70.0, 80.0])
