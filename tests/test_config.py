"""Experiment YAML: loading, relative search-space paths, --set overrides, safe YAML, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunetl.config import ConfigError, load_experiment

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_quickstart_loads() -> None:
    exp = load_experiment(ROOT / "experiments" / "quickstart.yaml")
    assert exp.name == "quickstart"
    assert exp.dataset.builtin == "digits" and exp.dataset.classes == [5, 6, 7, 8, 9]
    assert exp.source.kind == "train_on"
    assert exp.search_space["images_per_label"] == {"grid": [5, 50]}


def test_search_space_path_is_relative_to_the_experiment(tmp_path: Path) -> None:
    (tmp_path / "spaces").mkdir()
    _write(tmp_path / "spaces", "frozen_depth: {grid: [0, 1]}\n", "s.yaml")
    exp = load_experiment(_write(tmp_path, "name: x\ndataset: {builtin: digits}\nsearch_space: spaces/s.yaml\n"))
    assert exp.search_space == {"frozen_depth": {"grid": [0, 1]}}
    assert exp.search_space_file == str(tmp_path / "spaces" / "s.yaml")


def test_set_overrides_are_dotted_and_yaml_typed(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: x\ndataset: {builtin: digits}\nsearch_space: {frozen_depth: 0}\n")
    exp = load_experiment(
        path,
        overrides=["training.epochs=3", "seeds=[1, 2]", "search_space.images_per_label={grid: [5]}",
                   "training.augment=true"],
    )
    assert exp.training.epochs == 3 and exp.seeds == [1, 2] and exp.training.augment is True
    assert exp.search_space["images_per_label"] == {"grid": [5]}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("name: x\ndataset: {builtin: digits}\ntraining: {epochz: 3}\n", "training.epochz: unknown key"),
        ("name: x\ndataset: {builtin: digits}\nscheduler: {type: hyperbandx}\n", "scheduler.type"),
        ("name: x\ndataset: {builtin: digits, path: /tmp}\n", "dataset"),
        ("name: x\ndataset: {builtin: digits}\nsource: {weights: imagenet, weights_file: a.pt}\n",
         "give only one of train_on, weights, weights_file"),
        ("name: x\n", "give exactly one of dataset (one target task) or tasks"),
        ("name: x\ndataset: {builtin: digits}\nsearch_space: missing.yaml\n", "search_space: file not found"),
    ],
)
def test_invalid_experiments_name_the_key(tmp_path: Path, text: str, needle: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    assert needle in str(err.value)
    assert str(path) in str(err.value)


def test_bad_override_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: x\ndataset: {builtin: digits}\n")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_experiment(path, overrides=["training.epochs"])
    with pytest.raises(ConfigError, match="name is a str, not a mapping"):
        load_experiment(path, overrides=["name.first=3"])
