"""The fine-tuning knobs (weight_decay, lr_schedule + warmup_epochs, label_smoothing, mixup/cutmix,
augment policies, layer_decay, grad_clip): schedule values, layer-decay multipliers, validation errors,
a short real training run with each on digits, and how each meets the frozen-prefix cache."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tunetl import api
from tunetl.config import ConfigError, ExperimentConfig, load_experiment
from tunetl.data import TaskData, load_dataset
from tunetl.mixing import BatchMixer
from tunetl.models import build
from tunetl.params import TrialParams, layer_decay_multipliers
from tunetl.schedule import build_lr_schedule
from tunetl.search.space import SpaceError, parse_space
from tunetl.trial import TrialRunner

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "experiments" / "quickstart.yaml"


@pytest.fixture(scope="module")
def experiment() -> ExperimentConfig:
    return load_experiment(QUICK, overrides=["training.epochs=4"])


@pytest.fixture(scope="module")
def task(experiment: ExperimentConfig) -> TaskData:
    return load_dataset(experiment.dataset)


@pytest.fixture(scope="module")
def source() -> dict[str, torch.Tensor]:
    """Random smallcnn weights for digits' one channel: enough to have a prefix to freeze and cache."""
    return build("smallcnn", num_classes=5, in_channels=1, seed=123).state_dict()


def _factors(schedule: str, warmup: int, epochs: int) -> list[float]:
    """The per-epoch factor of two groups (lr 0.1 and 0.01), checked to move together."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in (0.1, 0.01)]
    opt = torch.optim.SGD(groups, lr=0.1)
    sched = build_lr_schedule(opt, schedule, warmup, epochs)
    out = []
    for _ in range(epochs):
        a, b = (g["lr"] for g in opt.param_groups)
        assert a / 0.1 == pytest.approx(b / 0.01)
        out.append(a / 0.1)
        opt.step()
        if sched is not None:
            sched.step()
    return out


def test_schedule_values_per_epoch() -> None:
    assert _factors("constant", 0, 4) == [1.0] * 4
    assert _factors("constant", 2, 5) == pytest.approx([1 / 3, 2 / 3, 1, 1, 1])
    # cosine over the 3 epochs after warmup: (1 + cos(pi k / 3)) / 2
    assert _factors("cosine", 1, 4) == pytest.approx([0.5, 1.0, 0.75, 0.25])
    assert _factors("cosine", 0, 4) == pytest.approx([(1 + math.cos(math.pi * k / 4)) / 2 for k in range(4)])
    # step: x0.1 after half and after three quarters of the epochs after warmup
    assert _factors("step", 0, 8) == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])
    assert _factors("step", 2, 10) == pytest.approx([1 / 3, 2 / 3, 1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])
    with pytest.raises(ValueError, match="warmup_epochs"):
        _factors("cosine", 4, 4)


def test_layer_decay_multipliers_and_rates() -> None:
    assert layer_decay_multipliers(0.5, 4) == (0.125, 0.25, 0.5, 1.0)
    p = TrialParams(frozen_depth=1, inner_lr=0.01, last_lr=0.1, layer_decay=0.5).resolved(4, 0.01, False, "sgd")
    assert p.stage_multipliers == (0.125, 0.25, 0.5, 1.0) and p.layer_decay == 0.5
    assert p.stage_lrs() == pytest.approx([0.0, 0.0025, 0.005, 0.01])  # stage 1 frozen
    assert p.head_lr() == 0.1
    # training.layer_decay is the default; the trial's own value wins
    assert TrialParams().resolved(2, 0.1, False, "sgd", layer_decay=0.1).stage_lrs() == pytest.approx([0.01, 0.1])
    assert TrialParams(layer_decay=1.0).resolved(2, 0.1, False, "sgd", layer_decay=0.1).stage_lrs() == [0.1, 0.1]


def test_stage_multipliers_and_layer_decay_are_mutually_exclusive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"stage_multipliers .* and layer_decay .* are mutually exclusive"):
        TrialParams(stage_multipliers=(1, 1, 1, 1), layer_decay=0.5)
    with pytest.raises(ValueError, match=r"stage_multipliers .*layer_decay \(training.layer_decay\)"):
        TrialParams(stage_multipliers=(1, 1, 1, 1)).resolved(4, 0.01, False, "sgd", layer_decay=0.5)
    space = "search_space={stage_multipliers: [0, 1, 1, 1], layer_decay: {grid: [0.5, 0.8]}}"
    with pytest.raises(ConfigError, match=r"search_space.stage_multipliers\) and layer_decay \(search_space.layer_decay"):
        api.plan(QUICK, overrides=[space])
    with pytest.raises(ConfigError, match=r"layer_decay \(training.layer_decay: 0.7\) are mutually exclusive"):
        api.plan(QUICK, overrides=["search_space={stage_multipliers: [0, 1, 1, 1]}", "training.layer_decay=0.7"])
    # In separate conditions the two never meet.
    ok = "search_space={conditions: {grid: [{name: a, stage_multipliers: [0, 1, 1, 1]}, {name: b, layer_decay: 0.5}]}}"
    assert api.plan(QUICK, overrides=[ok]).grid_points == 2


@pytest.mark.parametrize(
    ("space", "needle"),
    [
        ({"lr_schedule": "linear"}, "search_space.lr_schedule: 'linear': Input should be 'constant', 'cosine' or 'step'"),
        ({"augment": "autoaugment"}, "search_space.augment: 'autoaugment': Input should be"),
        ({"label_smoothing": 1.0}, "search_space.label_smoothing: 1.0: Input should be less than 1"),
        ({"mixup": {"grid": [-1.0]}}, "search_space.mixup.grid: -1.0: Input should be greater than or equal to 0"),
        ({"layer_decay": 0}, "search_space.layer_decay: 0: Input should be greater than 0"),
        ({"grad_clip": {"randint": [0, 2]}}, "grad_clip is not an integer parameter"),
        ({"warmup_epochs": {"uniform": [0, 2]}}, "warmup_epochs is not a real-valued parameter"),
    ],
)
def test_bad_knob_values_name_the_key(space: dict[str, Any], needle: str) -> None:
    with pytest.raises(SpaceError) as err:
        parse_space(space)
    assert needle in str(err.value)


def test_warmup_must_leave_epochs_and_old_augment_values_still_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"search_space.warmup_epochs: 4 must be < training.epochs \(4\)"):
        api.plan(QUICK, overrides=["training.epochs=4", "search_space={warmup_epochs: {grid: [1, 4]}}"])
    with pytest.raises(ConfigError, match=r"training: warmup_epochs \(3\) must be < epochs \(3\)"):
        load_experiment(QUICK, overrides=["training.epochs=3", "training.warmup_epochs=3"])
    assert [TrialParams(augment=v).augment for v in (True, False, "trivial")] == ["crop_flip", "none", "trivial"]
    assert parse_space({"augment": {"grid": [False, True, "randaugment"]}}).dims["augment"].values == (
        "none", "crop_flip", "randaugment")
    on = load_experiment(QUICK, overrides=["training.augment=true"])
    assert TrialParams().resolved(4, 0.01, on.training.augment, "sgd").augment == "crop_flip"
    # Knobs left at their defaults do not change an experiment's fingerprint (older searches resume).
    base = load_experiment(QUICK)
    assert load_experiment(QUICK, overrides=["training.mixup=0", "training.lr_schedule=constant"]).fingerprint() == (
        base.fingerprint())
    assert load_experiment(QUICK, overrides=["training.mixup=0.2"]).fingerprint() != base.fingerprint()


def test_the_modern_space_file_validates() -> None:
    import yaml

    raw = yaml.safe_load(QUICK.read_text())
    raw["search_space"] = str(ROOT / "search_spaces" / "modern.yaml")
    for searcher in ("optuna", "grid"):
        p = api.plan(raw, overrides=[f"searcher.type={searcher}", "training.epochs=4"])
        assert p.grid_points == 2
        assert {"lr_schedule", "layer_decay", "mixup", "cutmix", "augment", "grad_clip"} <= set(p.space.dims)
    # What Optuna draws from it maps back to valid trial parameters (integers stay integers).
    import optuna

    from tunetl.search.tune_space import OptunaSpace, trial_params

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        trial = study.ask()
        OptunaSpace(p.space)(trial)
        params = TrialParams.model_validate(trial_params(p.space, trial.params))
        assert params.layer_decay is not None and 0.5 <= params.layer_decay <= 1
        assert isinstance(params.warmup_epochs, int) and params.augment in ("none", "crop_flip", "trivial", "randaugment")
        study.tell(trial, 0.0)


KNOBS: list[dict[str, Any]] = [
    {"weight_decay": 1e-3},
    {"lr_schedule": "cosine", "warmup_epochs": 1},
    {"lr_schedule": "step"},
    {"label_smoothing": 0.1},
    {"mixup": 0.4},
    {"cutmix": 1.0},
    {"augment": "crop_flip"},
    {"augment": "trivial"},
    {"augment": "randaugment"},
    {"layer_decay": 0.6},
    {"grad_clip": 0.5},
]


@pytest.mark.parametrize("knob", KNOBS, ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()))
def test_each_knob_trains_on_digits(experiment: ExperimentConfig, task: TaskData, source: dict, knob: dict) -> None:
    params = TrialParams(transfer_depth=4, frozen_depth=1, images_per_label=20, base_lr=0.05, **knob)
    runner = TrialRunner(params, experiment, seed=0, task=task, source_state=source, feature_cache="trial")
    history = [runner.run_epoch() for _ in range(3)]
    assert all(math.isfinite(m.train_loss) and 0 <= m.val_acc <= 1 for m in history)
    assert history[-1].train_loss < history[0].train_loss or history[-1].val_acc > history[0].val_acc
    for key, value in knob.items():
        assert getattr(runner.params, key) == value
    if "warmup_epochs" in knob:
        assert [m.lr_factor for m in history] == pytest.approx([0.5, 1.0, 0.75])
    else:
        assert history[0].lr_factor == 1.0


def test_mixing_smoothing_and_schedules_keep_the_prefix_cache(
    experiment: ExperimentConfig, task: TaskData, source: dict, tmp_path: Path
) -> None:
    """They act after the frozen prefix: the node cache serves both splits, and the trial trains exactly
    as it does when the prefix runs every epoch."""
    params = TrialParams(transfer_depth=4, frozen_depth=2, images_per_label=10, mixup=0.4, cutmix=1.0,
                         label_smoothing=0.1, lr_schedule="cosine", warmup_epochs=1, grad_clip=1.0,
                         weight_decay=1e-4, layer_decay=0.7)
    node = TrialRunner(params, experiment, seed=3, task=task, source_state=source, feature_cache="node",
                       feature_cache_dir=tmp_path)
    off = TrialRunner(params, experiment, seed=3, task=task, source_state=source, feature_cache="off")
    assert node.feature_source == {"train": "node-computed", "val": "node-computed"}
    assert (node.train_start, node.val_start) == (2, 2) and off.train_start == 0
    cached = [node.run_epoch() for _ in range(3)]
    full = [off.run_epoch() for _ in range(3)]
    assert [m.val_acc for m in cached] == [m.val_acc for m in full]
    assert [m.train_acc for m in cached] == [m.train_acc for m in full]
    assert [m.train_loss for m in cached] == pytest.approx([m.train_loss for m in full], rel=1e-5)


@pytest.mark.parametrize("policy", ["crop_flip", "trivial", "randaugment"])
def test_random_augmentation_runs_training_batches_through_the_prefix(
    experiment: ExperimentConfig, task: TaskData, source: dict, tmp_path: Path, policy: str
) -> None:
    params = TrialParams(transfer_depth=4, frozen_depth=2, images_per_label=10, augment=policy)
    runner = TrialRunner(params, experiment, seed=0, task=task, source_state=source, feature_cache="node",
                         feature_cache_dir=tmp_path)
    assert runner.train_start == 0 and runner.feature_source["train"] == "preprocessed"
    assert runner.val_start == 2 and set(runner.feature_keys) == {"val"}  # validation is never augmented
    assert math.isfinite(runner.run_epoch().train_loss)


def test_knobs_resume_bit_for_bit(experiment: ExperimentConfig, task: TaskData, source: dict) -> None:
    params = TrialParams(transfer_depth=4, frozen_depth=1, images_per_label=10, augment="trivial", mixup=0.4,
                         cutmix=1.0, lr_schedule="step", warmup_epochs=1)
    whole = TrialRunner(params, experiment, seed=1, task=task, source_state=source)
    straight = [whole.run_epoch().as_dict() | {"seconds": 0} for _ in range(4)]
    first = TrialRunner(params, experiment, seed=1, task=task, source_state=source)
    half = [first.run_epoch().as_dict() | {"seconds": 0} for _ in range(2)]
    resumed = TrialRunner(params, experiment, seed=1, task=task, source_state=source)
    resumed.load_state_dict(first.state_dict())
    rest = [resumed.run_epoch().as_dict() | {"seconds": 0} for _ in range(2)]
    assert half + rest == straight


def test_mixer_soft_targets_and_cutmix_needs_feature_maps() -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    mixed, target = BatchMixer(0.4, 0.0, 3, gen)(x, y)
    assert mixed.shape == x.shape and target.shape == (6, 3)
    assert torch.allclose(target.sum(1), torch.ones(6))
    with pytest.raises(ValueError, match="cutmix cuts boxes out of .* use mixup"):
        BatchMixer(0.0, 1.0, 3, gen)(x, y)
