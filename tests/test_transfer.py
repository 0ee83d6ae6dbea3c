"""Transfer recipes: which stages are copied, which are frozen, and each group's learning rate."""

from __future__ import annotations

import pytest
import torch

from tunetl.models import build
from tunetl.params import TrialParams
from tunetl.transfer import make_optimizer, prepare_model


def _source(seed: int = 123) -> dict[str, torch.Tensor]:
    model = build("smallcnn", num_classes=5, in_channels=1, seed=seed)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for value in state.values():  # every tensor differs from a fresh init, so copying is visible
        if value.dtype.is_floating_point:
            value.add_(torch.rand_like(value) + 0.1)
    return state


def _prepare(source: dict[str, torch.Tensor] | None = None, **params: object):  # type: ignore[no-untyped-def]
    resolved = TrialParams.model_validate(params).resolved(4, base_lr=0.01, augment=False, optimizer="sgd")
    return prepare_model("smallcnn", num_classes=3, in_channels=1, params=resolved,
                         source_state=source if source is not None else _source(), seed=0)


@pytest.mark.parametrize("depth", [0, 1, 2, 3, 4])
def test_transfer_depth_copies_exactly_the_first_stages(depth: int) -> None:
    src = _source()
    prepared = _prepare(src, transfer_depth=depth, frozen_depth=0)
    for key, value in prepared.model.state_dict().items():
        if not key.startswith("stages.") or not value.dtype.is_floating_point:
            continue
        stage = int(key.split(".")[1])
        same = torch.equal(value, src[key])
        assert same == (stage < depth), f"{key}: copied={same}, stage {stage}, transfer_depth {depth}"


def test_il_ll_learning_rates() -> None:
    prepared = _prepare(inner_lr=0.001, last_lr=0.1, lr_scale=1.0)
    lrs = {g["name"]: g["lr"] for g in prepared.param_groups}
    assert lrs == {"conv1": 0.001, "conv2": 0.001, "conv3": 0.001, "conv4": 0.001, "head": 0.1}


def test_graduated_multipliers_times_scale() -> None:
    prepared = _prepare(inner_lr=0.001, last_lr=0.016, stage_multipliers=[0, 1, 2, 4], lr_scale=0.5)
    lrs = {g["name"]: g["lr"] for g in prepared.param_groups}
    assert lrs == pytest.approx({"conv2": 0.0005, "conv3": 0.001, "conv4": 0.002, "head": 0.008})
    # The zero-multiplier first stage is frozen like a frozen prefix and never reaches the optimizer.
    assert prepared.frozen_prefix == 1
    assert not any(p.requires_grad for p in prepared.model.stages[0].parameters())


def test_il_zero_trains_only_the_head() -> None:
    prepared = _prepare(inner_lr=0.0, last_lr=0.01)
    assert [g["name"] for g in prepared.param_groups] == ["head"]
    assert prepared.frozen_prefix == 4
    opt = make_optimizer("sgd", prepared.param_groups)
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    n_head = sum(p.numel() for p in prepared.model.head.parameters())
    assert n_opt == n_head


def test_frozen_prefix_keeps_batchnorm_in_eval_mode() -> None:
    prepared = _prepare(transfer_depth=4, frozen_depth=2)
    model = prepared.model.train()
    bn_modes = [m.training for i in range(4) for m in model.stages[i].modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn_modes[:1] == [False] and bn_modes[-1] is True
    assert prepared.frozen_prefix == 2


def test_base_lr_defaults_and_optimizers() -> None:
    prepared = _prepare(base_lr=0.05)
    assert {g["lr"] for g in prepared.param_groups} == {0.05}
    for name, cls in [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("rmsprop", torch.optim.RMSprop)]:
        assert isinstance(make_optimizer(name, prepared.param_groups), cls)


def test_transfer_without_source_is_a_clear_error() -> None:
    resolved = TrialParams().resolved(4, base_lr=0.01, augment=False, optimizer="sgd")
    with pytest.raises(ValueError, match="needs source weights"):
        prepare_model("smallcnn", num_classes=3, in_channels=1, params=resolved, source_state=None, seed=0)


def test_trial_params_reject_inconsistent_recipes() -> None:
    with pytest.raises(ValueError, match="frozen_depth \\(3\\) > transfer_depth \\(1\\)"):
        TrialParams(transfer_depth=1, frozen_depth=3)
    with pytest.raises(ValueError, match="stage_multipliers has 5 values but the backbone has 4 stages"):
        TrialParams(stage_multipliers=(0, 1, 2, 4, 8)).resolved(4, 0.01, False, "sgd")
