"""`tunetl rank`: scores from one forward pass per backbone, a ranked table, recorded in MLflow; pruning."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tunetl import api
from tunetl.cli import main
from tunetl.meta.transferability import h_score, nce


def test_nce_and_hscore_prefer_informative_sources() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    informative = np.eye(5)[y] * 0.9 + 0.02
    noise = rng.dirichlet(np.ones(5), size=len(y))
    assert nce(informative, y) == pytest.approx(0.0)
    assert nce(noise, y) < -0.5
    separated = rng.normal(size=(60, 8)) + 4 * np.eye(8)[y]
    assert h_score(separated, y) > h_score(rng.normal(size=(60, 8)), y)


def test_rank_cli_scores_lite_backbones_and_records_them(sqlite_uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["rank", "--dataset", "builtin:digits[0,1,2]", "--backbones", "efficientnet_lite0", "smallcnn",
                 "--source", "imagenet", "--images-per-label", "4", "--image-size", "32", "--tracking-uri",
                 sqlite_uri, "--json"])
    assert code == 2  # smallcnn has no ImageNet weights: named, exit 2
    assert "no ImageNet weights" in capsys.readouterr().err
    assert main(["rank", "--dataset", "builtin:digits[0,1,2]", "--backbones", "efficientnet_lite0",
                 "efficientnet_lite1", "--images-per-label", "4", "--image-size", "32", "--tracking-uri",
                 sqlite_uri, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    table = out["ranking"]
    assert [r["rank"] for r in table] == [1, 2]
    assert {r["backbone"] for r in table} == {"efficientnet_lite0", "efficientnet_lite1"}
    assert all(math.isfinite(r[k]) for r in table for k in ("logme", "hscore", "leep", "nce", "seconds"))
    assert table[0]["logme"] >= table[1]["logme"] and table[0]["images"] == 12
    from mlflow import MlflowClient

    run = MlflowClient(sqlite_uri).get_run(out["run_id"])
    assert run.data.params["backbones"] == "efficientnet_lite0,efficientnet_lite1"
    assert "logme/efficientnet_lite0" in run.data.metrics


def test_prune_backbones_keeps_the_top_k_and_says_so() -> None:
    plan = api.plan({"name": "p", "dataset": {"builtin": "digits"}, "searcher": {"prune_backbones": 1},
                     "search_space": {"backbone": {"grid": ["smallcnn", "resnet18"]}, "transfer_depth": 0,
                                      "images_per_label": 5}})
    assert plan.grid_points == 2

    class Bundle:
        features = {"smallcnn": {"feature.logme": -1.0}, "resnet18": {"feature.logme": 0.5}}

        def for_backbone(self, b: str) -> object:
            return type("B", (), {"features": self.features[b]})()

    tags = api._prune_backbones(plan, [Bundle()])
    assert json.loads(tags["tunetl.prune_backbones.kept"]) == ["resnet18"]
    assert plan.grid_points == 1 and plan.space.grid_points()[0] == [{"backbone": "resnet18"}]
