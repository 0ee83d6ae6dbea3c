"""The tables `tunetl run` ends with, computed from a trials frame in hand (no MLflow)."""

from __future__ import annotations

import pandas as pd

from tunetl import api
from tunetl.meta.analysis import condition_table


def _frame() -> pd.DataFrame:
    rows = []
    for ipl, accs in {5: {"base": (0.6, 0.7), "S2T": (0.9, 0.92)}, 50: {"base": (0.98, 0.99), "S2T": (0.97, 0.97)}}.items():
        for cond, (a, b) in accs.items():
            depth = 0 if cond == "base" else 2
            for seed, acc in enumerate((a, b)):
                rows.append({
                    "run_id": f"{cond}{ipl}{seed}", "status": "FINISHED", "condition": cond,
                    "transfer_depth": depth, "frozen_depth": depth, "images_per_label": ipl, "seed": seed,
                    "dataset": "digits[5,6,7,8,9]", "backbone": "smallcnn", "best_val_acc": acc, "val_acc": acc,
                    # ASHA cut only seed 1 of base at 5 images per label
                    "stopped_early": cond == "base" and ipl == 5 and seed == 1,
                })
    return pd.DataFrame(rows)


def test_condition_table_flags_cells_with_a_stopped_trial() -> None:
    table = condition_table(_frame(), task_cols=["images_per_label"]).set_index(["images_per_label", "condition"])
    assert table["stopped"].to_dict() == {(5, "S2T"): False, (5, "base"): True, (50, "S2T"): False,
                                          (50, "base"): False}
    assert table.loc[(5, "S2T"), "acc_mean_pct"] == 91.0


def test_condition_summary_marks_stopped_cells() -> None:
    lines = api.condition_summary(_frame()).splitlines()
    assert lines[0].split() == ["condition", "base", "S2T"]
    assert lines[2].split() == ["5", "65.0*", "91.0"]
    assert lines[3].split() == ["50", "98.5", "97.0"]


def test_best_table_ranks_per_images_per_label_from_the_frame() -> None:
    best = api.best_table(_frame())
    assert best[["images_per_label", "condition"]].values.tolist() == [[5, "S2T"], [50, "base"]]
    assert best["n_seeds"].tolist() == [2, 2]
