"""benchmarks/zoo_eval.py: the best trial per candidate and group, and Kendall's tau over the candidates
that have each score (a weights file without its classifier has no LEEP)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "zoo_eval.py"


@pytest.fixture(scope="module")
def zoo_eval() -> ModuleType:
    spec = importlib.util.spec_from_file_location("zoo_eval", PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _trials() -> pd.DataFrame:
    rows = []
    for ipl, accs in ((5, {"a": (0.3, 0.6), "b": (0.5, 0.4), "c": (0.1, 0.2)}), (20, {"a": (0.8, 0.7), "b": (0.9, 0.6),
                                                                                     "c": (0.1, 0.1)})):
        for backbone, (full, frozen) in accs.items():
            for fraction, acc in ((0.0, full), (1.0, frozen)):
                rows.append({"status": "FINISHED", "images_per_label": ipl, "backbone": backbone, "best_val_acc": acc,
                             "frozen_fraction": fraction, "inner_lr": 0.001, "stopped_early": False})
    rows.append({**rows[0], "status": "FAILED", "best_val_acc": 0.99})
    return pd.DataFrame(rows)


def test_best_per_candidate_and_tau_over_the_candidates_with_a_score(zoo_eval: ModuleType, tmp_path: Path) -> None:
    best = zoo_eval.best_per_backbone(_trials())
    at5 = best[best["images/label"] == "5"].set_index("backbone")
    assert at5.loc["a", "best val acc %"] == pytest.approx(60.0), "a FAILED trial's accuracy must not count"
    assert at5.loc["a", "its frozen fraction"] == 1.0 and at5.loc["b", "its frozen fraction"] == 0.0
    assert at5.loc["a", "best @ frozen 0"] == pytest.approx(30.0)
    assert list(best["images/label"]) == ["5"] * 3 + ["20"] * 3 and list(at5.index) == ["a", "b", "c"]

    ranking = {"ranking": [{"backbone": "a", "logme": 3.0, "leep": -1.0}, {"backbone": "b", "logme": 2.0, "leep": None},
                           {"backbone": "c", "logme": 1.0, "leep": -2.0}]}
    (tmp_path / "rank.json").write_text(json.dumps(ranking))
    scores = zoo_eval.rank_scores([f"exp={tmp_path / 'rank.json'}"], "exp")
    taus = zoo_eval.taus(best, scores).set_index("images/label")
    assert taus.loc["5", "tau logme"] == "1.00 over 3"
    assert taus.loc["20", "tau logme"] == "0.33 over 3"
    assert taus.loc["20", "tau leep"] == "1.00 over 2"


def test_a_second_experiments_candidates_are_named_by_it(zoo_eval: ModuleType) -> None:
    assert zoo_eval.candidate("efficientnet_lite0", "zoo", "zoo") == "efficientnet_lite0"
    assert zoo_eval.candidate("efficientnet_lite0", "scratch", "zoo") == "efficientnet_lite0 [scratch]"
    with pytest.raises(SystemExit, match="EXPERIMENT=FILE"):
        zoo_eval.rank_scores(["rank.json"], "zoo")
