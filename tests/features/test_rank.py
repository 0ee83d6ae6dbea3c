"""`tunetl rank`: scores from one forward pass per backbone, a ranked table, recorded in MLflow; pruning."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tunetl import api
from tunetl.cli import main
from tunetl.features.transferability import h_score, nce


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
    threads = torch.get_num_threads()
    assert main(["rank", "--dataset", "builtin:digits[0,1,2]", "--backbones", "efficientnet_lite0",
                 "efficientnet_lite1", "--images-per-label", "4", "--image-size", "32", "--tracking-uri",
                 sqlite_uri, "--threads", "1", "--json"]) == 0
    assert torch.get_num_threads() == threads  # --threads holds only while ranking
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
    assert run.data.params["threads"] == "1"


def test_rank_refuses_zero_threads() -> None:
    with pytest.raises(api.ConfigError, match="--threads: give 1 or more"):
        api.rank_backbones("builtin:digits[0,1]", ["efficientnet_lite0"], threads=0, experiment=None)


def _prune_plan(tmp_path: Path, source: dict | None) -> tuple[api.Plan, list]:
    """A real plan over two backbones and its real bundles (source weights and features per backbone)."""
    from tunetl.search.preflight import open_storage

    exp = {"name": "p", "dataset": {"builtin": "digits", "classes": [5, 6, 7]}, "searcher": {"prune_backbones": 1},
           "training": {"epochs": 1, "image_size": 16},
           "search_space": {"backbone": {"grid": ["smallcnn", "timm/test_resnet"]},
                            "transfer_depth": 2 if source else 0, "images_per_label": 5}}
    if source:
        exp["source"] = source
    plan = api.plan(exp)
    return plan, api._bundles(plan, open_storage(tmp_path / "runs"))


def test_prune_backbones_keeps_the_top_k_and_says_so(tmp_path: Path) -> None:
    plan, bundles = _prune_plan(tmp_path, {"train_on": {"builtin": "digits", "classes": [0, 1, 2]}, "epochs": 1})
    assert plan.grid_points == 2
    scores = {b: bundles[0].for_backbone(b).features["feature.logme"] for b in ("smallcnn", "timm/test_resnet")}
    assert all(math.isfinite(v) for v in scores.values())
    best = max(scores, key=scores.get)
    tags = api._prune_backbones(plan, bundles)
    assert json.loads(tags["tunetl.prune_backbones.kept"]) == [best]
    assert plan.grid_points == 1 and plan.space.grid_points()[0] == [{"backbone": best}]
    assert json.loads(tags["tunetl.prune_backbones.scores"]) == {"by": "logme", **scores}
    # The pruned backbone's source weights no longer travel with the bundles.
    assert set(bundles[0].others) <= {best, bundles[0].experiment.backbone}


def test_prune_backbones_without_scores_is_refused(tmp_path: Path) -> None:
    plan, bundles = _prune_plan(tmp_path, None)
    with pytest.raises(api.ConfigError, match="prune_backbones: no logme score"):
        api._prune_backbones(plan, bundles)


@pytest.mark.parametrize(("n", "d"), [(40, 100), (120, 16)])
def test_hscore_equals_the_direct_ledoit_wolf_formula(n: int, d: int) -> None:
    from sklearn.covariance import LedoitWolf, ledoit_wolf_shrinkage

    from tunetl.features.transferability import ledoit_wolf_shrinkage as shrinkage

    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, n)
    f = np.maximum(rng.normal(size=(n, d)) + 2 * rng.normal(size=(4, d))[y], 0)
    c = f - f.mean(axis=0)
    assert shrinkage(c) == pytest.approx(ledoit_wolf_shrinkage(c, assume_centered=True), rel=1e-9)
    means = np.zeros_like(c)
    for k in np.unique(y):
        means[y == k] = c[y == k].mean(axis=0)
    cov = LedoitWolf(assume_centered=True).fit(c).covariance_
    direct = float(np.trace(np.linalg.solve(cov, means.T @ means / n)))
    assert h_score(f, y) == pytest.approx(direct, rel=1e-8)
