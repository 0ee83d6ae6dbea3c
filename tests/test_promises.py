"""Promises of README.md and docs/user-guide.md that no other test held (issue 18): `tunetl backbones`,
`tunetl features`, `--set dataset.builtin=null`, `TUNETL_FEATURE_CACHE_MAX_GB`, `training.eval_batch_size`,
`experiments/meta_digits.yaml`, and `tunetl.train_trial` reusing the source a search cached.

Small and Ray-free; the promises that need a recorded search (`searcher.warm_start`, meta_digits run end to
end, predict) are in tests/test_docs_examples.py, which shares one recorded state.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tunetl
from tunetl import api
from tunetl.cli import main
from tunetl.config import ConfigError, ExperimentConfig, load_experiment
from tunetl.feature_cache import CACHE_MAX_GB_ENV, DEFAULT_MAX_BYTES, FeatureCache
from tunetl.models import list_backbones
from tunetl.params import TrialParams
from tunetl.source import source_file, source_state_for
from tunetl.trial import TrialRunner

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "name": "tiny",
    "dataset": {"builtin": "digits", "classes": [5, 6]},
    "source": {"train_on": {"builtin": "digits", "classes": [0, 1]}, "epochs": 1},
    "training": {"epochs": 1, "batch_size": 16},
    "search_space": {},
}


def test_backbones_lists_every_backbone_with_its_stages(capsys: pytest.CaptureFixture) -> None:
    assert main(["backbones"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split() == ["smallcnn", "4", "stages:", "conv1,", "conv2,", "conv3,", "conv4"] for line in lines)
    assert sum(" stages: " in line for line in lines) == len(list_backbones())
    assert any(line.startswith("Any timm model: backbone timm/<name>") for line in lines)
    assert main(["backbones", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == list_backbones()


def test_features_without_a_source_and_with_one_trained_in_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`tunetl features`: counts alone without a source; with one, a progress message while the source trains,
    the model cached under `<--storage>/cache/sources/`, nothing written to the working directory."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["features", "--dataset", "builtin:digits[5,6]", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["feature.num_classes"] == 2 and plain["feature.logme"] is None

    storage = tmp_path / "runs"
    args = ["features", "--dataset", "builtin:digits[5,6]", "--source", "builtin:digits[0,1]",
            "--storage", str(storage), "--images-per-label", "5"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "training the source model: smallcnn on digits[0,1], 15 epochs" in err
    assert "source model: epoch 15/15" in err
    assert "feature.logme" in out and "feature.images_per_label             5" in out
    assert [p.suffix for p in (storage / "cache" / "sources").iterdir()] != []
    assert main(args) == 0
    assert "training the source" not in capsys.readouterr().err  # cached: reused, not retrained
    assert list(work.iterdir()) == []


def test_train_trial_reuses_the_source_a_search_cached(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    exp = ExperimentConfig.model_validate(TINY)
    cached = source_file(exp, tmp_path / "cache", 1)
    source_state_for(exp, tmp_path / "cache")  # what `tunetl run --storage tmp_path` caches
    capsys.readouterr()
    before = cached.stat().st_mtime_ns
    history = tunetl.train_trial({"frozen_depth": 2, "images_per_label": 5}, exp, storage=tmp_path)
    assert len(history) == 1
    assert cached.stat().st_mtime_ns == before and "training the source" not in capsys.readouterr().err


def _folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8), mode="L").save(root / name / f"{i}.png")
    return root


def test_set_dataset_builtin_null_switches_to_a_folder(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "flowers")
    quickstart = ROOT / "experiments" / "quickstart.yaml"
    with pytest.raises(ConfigError, match="builtin"):
        api.plan(quickstart, [f"dataset.path={folder}"])
    p = api.plan(quickstart, ["dataset.builtin=null", f"dataset.path={folder}", "dataset.classes=null",
                              "search_space.images_per_label={grid: [5]}"])
    assert p.experiment.dataset.builtin is None and p.task_names == "flowers"
    assert p.grid_points == 5


def test_meta_digits_validates_as_documented() -> None:
    p = api.plan(ROOT / "experiments" / "meta_digits.yaml")
    assert len(p.tasks) == 6 and p.grid_points == 4 * 2 * 2
    assert p.experiment.scheduler.type == "none" and p.experiment.seeds == [0]
    assert {exp.source.epochs for exp, _ in p.tasks} == {10} and p.experiment.training.batch_size == 16


def test_feature_cache_cap_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    entry = torch.zeros(64, 64)  # 16 KiB
    monkeypatch.setenv(CACHE_MAX_GB_ENV, str(24 / (1 << 20)))  # 24 KiB: room for one entry, not two
    cache = FeatureCache(tmp_path)
    assert cache.max_bytes == 24 << 10
    cache.get_or_compute("first", lambda: entry)
    cache.get_or_compute("second", lambda: entry + 1)
    assert cache.read("first") is None and cache.read("second") is not None
    monkeypatch.setenv(CACHE_MAX_GB_ENV, "lots")
    with caplog.at_level(logging.WARNING):
        assert FeatureCache(tmp_path).max_bytes == DEFAULT_MAX_BYTES
    assert "not a number of GiB" in caplog.text


def test_eval_batch_size_sets_the_validation_batches_only() -> None:
    def run(eval_batch_size: int) -> tuple[list[int], float]:
        exp = ExperimentConfig.model_validate({**TINY, "source": {},
                                               "training": {**TINY["training"], "eval_batch_size": eval_batch_size}})
        runner = TrialRunner(TrialParams(transfer_depth=0), exp, seed=0)
        sizes = [len(y) for _, y in runner._val_batches()]
        return sizes, runner.run_epoch().val_acc

    small, acc_small = run(7)
    large, acc_large = run(512)
    assert set(small[:-1]) == {7} and len(large) == 1 and sum(small) == sum(large)
    assert acc_small == pytest.approx(acc_large)
    assert load_experiment(ROOT / "experiments" / "quickstart.yaml").training.eval_batch_size == 512
