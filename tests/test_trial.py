"""One trial end to end on digits (no Ray, no MLflow): freezing, determinism, resume, and the
headline transfer effect: transferred frozen stages beat frozen random stages at 5 images per label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tunetl.config import ExperimentConfig, load_experiment
from tunetl.params import TrialParams
from tunetl.source import source_state_for, train_source
from tunetl.standalone import train_trial
from tunetl.trial import TrialRunner

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def experiment() -> ExperimentConfig:
    return load_experiment(ROOT / "experiments" / "quickstart.yaml", overrides=["training.epochs=15"])


@pytest.fixture(scope="module")
def source(experiment: ExperimentConfig, tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    state = source_state_for(experiment, tmp_path_factory.mktemp("cache"))
    assert state is not None
    return state


def test_source_is_trained_once_and_cached(experiment: ExperimentConfig, tmp_path: Path) -> None:
    first = train_source(experiment, tmp_path, log=False)
    mtime = first.stat().st_mtime_ns
    again = train_source(experiment, tmp_path, log=False)
    assert again == first and again.stat().st_mtime_ns == mtime
    other = train_source(experiment.model_copy(update={"source": experiment.source.model_copy(update={"epochs": 2})}),
                         tmp_path, log=False)
    assert other != first


def test_frozen_stages_stay_bit_identical_to_the_source(experiment: ExperimentConfig, source: dict) -> None:
    runner = TrialRunner(TrialParams(transfer_depth=4, frozen_depth=2, images_per_label=10), experiment,
                         seed=0, source_state=source)
    for _ in range(3):
        runner.run_epoch()
    state = runner.model.state_dict()
    for key, value in state.items():
        if key.startswith("stages."):
            stage = int(key.split(".")[1])
            assert torch.equal(value, source[key]) == (stage < 2), key


def test_trials_are_deterministic_given_a_seed(experiment: ExperimentConfig, source: dict) -> None:
    params = {"transfer_depth": 4, "frozen_depth": 1, "images_per_label": 5}
    a = train_trial(params, experiment, seed=1, epochs=3, source_state=source)
    b = train_trial(params, experiment, seed=1, epochs=3, source_state=source)
    c = train_trial(params, experiment, seed=2, epochs=3, source_state=source)
    assert [m.train_loss for m in a] == [m.train_loss for m in b]
    assert [m.train_loss for m in a] != [m.train_loss for m in c]


def test_prefix_cache_gives_the_same_training(experiment: ExperimentConfig, source: dict) -> None:
    params = TrialParams(transfer_depth=3, frozen_depth=3, images_per_label=10)
    cached = TrialRunner(params, experiment, seed=0, source_state=source, cache_prefix=True)
    plain = TrialRunner(params, experiment, seed=0, source_state=source, cache_prefix=False)
    assert cached.train_start == 3 and plain.train_start == 0
    for _ in range(3):
        m1, m2 = cached.run_epoch(), plain.run_epoch()
        assert m1.val_acc == m2.val_acc
        assert m1.train_loss == pytest.approx(m2.train_loss, rel=1e-5)


def test_resume_from_state_dict_continues_identically(experiment: ExperimentConfig, source: dict) -> None:
    params = TrialParams(transfer_depth=4, frozen_depth=0, images_per_label=10, augment=True)
    full = TrialRunner(params, experiment, seed=0, source_state=source)
    losses = [full.run_epoch().train_loss for _ in range(4)]
    first = TrialRunner(params, experiment, seed=0, source_state=source)
    first.run_epoch(), first.run_epoch()
    state = first.state_dict()
    resumed = TrialRunner(params, experiment, seed=0, source_state=source)
    resumed.load_state_dict(state)
    rest = [resumed.run_epoch().train_loss for _ in range(2)]
    assert rest == pytest.approx(losses[2:], rel=1e-6)
    assert resumed.epoch == 4


def test_transferred_frozen_stages_beat_random_frozen_stages(experiment: ExperimentConfig, source: dict) -> None:
    """S3T (3 transferred stages, frozen) vs the same 3 stages frozen at their random init, 5 images/label."""
    transferred, random = [], []
    for seed in (0, 1, 2):
        t = train_trial({"transfer_depth": 3, "frozen_depth": 3, "images_per_label": 5}, experiment,
                        seed=seed, source_state=source)
        r = train_trial({"transfer_depth": 0, "stage_multipliers": [0, 0, 0, 1], "images_per_label": 5},
                        experiment, seed=seed, source_state=source)
        transferred.append(t[-1].val_acc)
        random.append(r[-1].val_acc)
    print(f"S3T {np.mean(transferred):.3f} vs random frozen {np.mean(random):.3f}")
    assert np.mean(transferred) > np.mean(random) + 0.05


def test_bf16_autocast_trains_like_float32(experiment: ExperimentConfig, source: dict) -> None:
    """`training.amp: bf16` runs the forward passes in bfloat16 (on CPU here; `auto` does so on a GPU)."""
    from tunetl.trial import amp_dtype

    assert amp_dtype("auto", torch.device("cpu")) is None and amp_dtype("off", torch.device("cpu")) is None
    assert amp_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    params = {"transfer_depth": 4, "frozen_depth": 1, "images_per_label": 20}
    fp32 = train_trial(params, experiment, seed=0, epochs=5, source_state=source)
    bf16_exp = experiment.model_copy(update={"training": experiment.training.model_copy(update={"amp": "bf16"})})
    bf16 = train_trial(params, bf16_exp, seed=0, epochs=5, source_state=source)
    assert [m.train_loss for m in bf16] != [m.train_loss for m in fp32]  # it really ran in another precision
    assert all(np.isfinite(m.train_loss) for m in bf16)
    assert bf16[-1].val_acc == pytest.approx(fp32[-1].val_acc, abs=0.05)
