"""Search-space parsing: grid expansion, constraint handling, and errors that name the key."""

from __future__ import annotations

import pytest

from tunetl.search.space import SpaceError, check_space, parse_space
from tunetl.search.tune_space import trial_params, trial_seed

QUICK = {
    "conditions": {
        "grid": [
            {"name": "base", "transfer_depth": 0, "frozen_depth": 0},
            {"name": "FTall", "frozen_depth": 0},
            {"name": "S2T", "transfer_depth": 2, "frozen_depth": 2},
        ]
    },
    "images_per_label": {"grid": [5, 50]},
}


def test_conditions_times_grid_expand_to_named_points() -> None:
    space = parse_space(QUICK)
    points, skipped = space.grid_points()
    assert skipped == 0
    assert len(points) == 6
    names = sorted({p["condition"] for p in points})
    assert names == ["FTall", "S2T", "base"]
    s2t = [p for p in points if p["condition"] == "S2T" and p["images_per_label"] == 50]
    assert s2t == [{"images_per_label": 50, "transfer_depth": 2, "frozen_depth": 2, "condition": "S2T"}]


def test_invalid_depth_combinations_are_skipped_and_counted() -> None:
    space = parse_space({"transfer_depth": {"grid": [0, 1, 2, 3]}, "frozen_depth": {"grid": [0, 1, 2, 3]}})
    points, skipped = space.grid_points()
    assert len(points) == 10 and skipped == 6
    assert all(p["frozen_depth"] <= p["transfer_depth"] for p in points)


def test_space_with_no_valid_combination_is_an_error() -> None:
    with pytest.raises(SpaceError, match="no valid combination"):
        parse_space({"transfer_depth": 1, "frozen_depth": {"grid": [2, 3]}})


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"frozen_depht": 1}, "search_space.frozen_depht: unknown key"),
        ({"lr_scale": {"uniform": [2.0, 1.0]}}, "search_space.lr_scale.uniform: low (2.0) > high (1.0)"),
        ({"inner_lr": {"loguniform": [0, 0.1]}}, "search_space.inner_lr.loguniform: bounds must be > 0"),
        ({"images_per_label": {"grid": []}}, "search_space.images_per_label.grid: needs a non-empty list"),
        ({"head": {"choice": ["linear", "mlp9"]}}, "search_space.head.choice: 'mlp9'"),
        ({"frozen_depth": {"uniform": [0, 2]}}, "frozen_depth is not a real-valued parameter"),
        ({"inner_lr": {"between": [0, 1]}}, "search_space.inner_lr: expected a value or exactly one of"),
        ({"conditions": {"grid": [{"name": "x", "frozen_depth": 3, "transfer_depth": 1}]}},
         "search_space.conditions.grid[0]: frozen_depth (3) > transfer_depth (1)"),
        ({"conditions": {"grid": [{"name": "a"}, {"name": "a"}]}}, "condition names must be unique"),
    ],
)
def test_invalid_spaces_name_the_key(raw: dict, needle: str) -> None:
    with pytest.raises(SpaceError) as err:
        parse_space(raw)
    assert needle in str(err.value)


def test_backbone_and_dataset_checks() -> None:
    space = parse_space({"stage_multipliers": [0, 1, 2, 4, 8], "images_per_label": {"grid": [5, 500]}})
    with pytest.raises(SpaceError, match="stage_multipliers: \\[0.0, 1.0, 2.0, 4.0, 8.0\\] has 5 values but the backbone has 4"):
        check_space(space, num_stages=4)
    with pytest.raises(SpaceError, match="images_per_label: 500 > the 120 training images of the smallest class \\(7\\)"):
        check_space(space, num_stages=5, min_class_count=120, min_class_name="7")
    check_space(space, num_stages=5, min_class_count=600)
    with pytest.raises(SpaceError, match="transfer_depth: 6 > the backbone's 5 stages"):
        check_space(parse_space({"transfer_depth": 6}), num_stages=5)


def test_no_source_allows_only_scratch() -> None:
    with pytest.raises(SpaceError, match="no source weights"):
        check_space(parse_space({"frozen_depth": 0}), num_stages=4, has_source=False)
    check_space(parse_space({"transfer_depth": 0}), num_stages=4, has_source=False)


def test_grid_searcher_refuses_sampled_depths() -> None:
    space = parse_space({"transfer_depth": 4, "frozen_depth": {"randint": [0, 3]}})
    with pytest.raises(SpaceError, match="use searcher optuna"):
        check_space(space, num_stages=4, searcher="grid")
    check_space(space, num_stages=4, searcher="optuna")


def test_tune_config_maps_back_to_trial_params() -> None:
    space = parse_space({**QUICK, "lr_scale": {"choice": [0.5, 2.0]}, "stage_multipliers": [0, 1, 2, 4]})
    points, _ = space.grid_points()
    idx = next(i for i, p in enumerate(points) if p.get("condition") == "S2T" and p["images_per_label"] == 5)
    params = trial_params(space, {"_point": idx, "seed": 3, "lr_scale": 2.0})
    assert params == {
        "stage_multipliers": (0.0, 1.0, 2.0, 4.0),
        "images_per_label": 5,
        "transfer_depth": 2,
        "frozen_depth": 2,
        "condition": "S2T",
        "lr_scale": 2.0,
    }
    assert trial_seed({"seed": 3}, [0, 1]) == 3
    assert trial_seed({"__trial_index__": 3}, [10, 11]) == 11
