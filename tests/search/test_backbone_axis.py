"""The backbone as a search axis: per-backbone checks of depths, fractions and stage multipliers."""

from __future__ import annotations

import pytest

from tunetl import api
from tunetl.config import ConfigError
from tunetl.search.space import SpaceError, check_space, parse_space
from tunetl.search.tune_space import trial_params

COUNTS = {"smallcnn": 4, "resnet18": 5}


def _checked(raw: dict, searcher: str = "grid"):  # type: ignore[no-untyped-def]
    space = parse_space(raw)
    check_space(space, num_stages=4, stage_counts=COUNTS, default_backbone="smallcnn", searcher=searcher)
    return space


def test_invalid_combinations_are_skipped_per_backbone_and_counted() -> None:
    space = _checked({
        "backbone": {"grid": ["smallcnn", "resnet18"]},
        "transfer_depth": {"grid": [4, 5]},
        "stage_multipliers": {"grid": [[1, 1, 1, 1], [1, 1, 1, 1, 1]]},
    })
    points, skipped = space.grid_points()
    # smallcnn: depth 4 with 4 multipliers; resnet18: depth 4 or 5 with 5 multipliers
    assert {(p["backbone"], p["transfer_depth"], len(p["stage_multipliers"])) for p in points} == {
        ("smallcnn", 4, 4), ("resnet18", 4, 5), ("resnet18", 5, 5)}
    assert skipped == 5


def test_fractions_carry_across_backbones() -> None:
    space = _checked({"backbone": {"grid": ["smallcnn", "resnet18"]}, "frozen_fraction": {"grid": [0, 0.5, 1]}})
    points, skipped = space.grid_points()
    assert len(points) == 6 and skipped == 0


def test_a_space_that_fits_no_backbone_is_an_error() -> None:
    with pytest.raises(SpaceError, match="no valid combination"):
        _checked({"backbone": {"grid": ["smallcnn", "resnet18"]}, "stage_multipliers": [1, 1]})


def test_backbone_choice_needs_optuna_and_joins_the_points() -> None:
    with pytest.raises(SpaceError, match="grid"):
        _checked({"backbone": {"choice": ["smallcnn", "resnet18"]}})
    space = _checked({"backbone": {"choice": ["smallcnn", "resnet18"]}}, searcher="optuna")
    assert [trial_params(space, {"_point": i})["backbone"] for i in range(2)] == ["smallcnn", "resnet18"]


def test_depth_and_fraction_together_are_refused() -> None:
    with pytest.raises(SpaceError, match="not both"):
        parse_space({"transfer_depth": 2, "transfer_fraction": {"grid": [0.5, 1.0]}})


def test_plan_names_an_unknown_backbone_in_the_space() -> None:
    exp = {"name": "x", "dataset": {"builtin": "digits"}, "search_space": {"backbone": {"grid": ["smallcnn", "nope"]},
                                                                       "transfer_depth": 0}}
    with pytest.raises(ConfigError, match=r"search_space\.backbone: unknown backbone 'nope'"):
        api.plan(exp)


@pytest.mark.slow
def test_search_over_backbones_is_recorded_per_backbone(tmp_path, sqlite_uri: str) -> None:  # type: ignore[no-untyped-def]
    """smallcnn (4 stages) and timm's test_resnet (5 stages) in one search, sources trained per backbone."""
    import ray

    from tunetl.tracking import load_trials

    quick = str(__import__("pathlib").Path(__file__).resolve().parents[2] / "experiments" / "quickstart.yaml")
    over = ["training.epochs=1", "source.epochs=1", "scheduler.type=none", "seeds=[0]", "training.image_size=32",
            "search_space={backbone: {grid: [smallcnn, timm/test_resnet]}, frozen_fraction: {grid: [0, 0.5]}, "
            "images_per_label: 10}"]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = api.run(quick, overrides=over, tracking_uri=sqlite_uri, storage=tmp_path / "runs")
    finally:
        ray.shutdown()
    assert summary.num_trials == 4 and summary.num_failed == 0
    frame = load_trials("quickstart", sqlite_uri)
    got = {(b, float(f), int(d)) for b, f, d in zip(frame["backbone"], frame["frozen_fraction"],
                                                    frame["frozen_depth"], strict=True)}
    assert got == {("smallcnn", 0.0, 0), ("smallcnn", 0.5, 2), ("timm/test_resnet", 0.0, 0),
                   ("timm/test_resnet", 0.5, 3)}
    assert (frame["status"] == "FINISHED").all()
    assert sorted((tmp_path / "runs").glob("cache/sources/*.pt")) and len(
        list((tmp_path / "runs").glob("cache/sources/*.pt"))) == 2
    best = api.best("quickstart", sqlite_uri, group_by=["backbone"], top=1)
    assert sorted(best["backbone"]) == ["smallcnn", "timm/test_resnet"]
