"""StagedModel behaviour on smallcnn: shapes, stage splitting, frozen stages, key layout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tunetl.models import build, stage_index, stage_state


@pytest.mark.parametrize("size", [8, 28])
def test_smallcnn_runs_at_native_size(size: int) -> None:
    model = build("smallcnn", 5, in_channels=1, seed=0)
    assert model.input_size is None
    assert model.stage_names == ["conv1", "conv2", "conv3", "conv4"]
    assert model(torch.randn(3, 1, size, size)).shape == (3, 5)
    assert model.features(torch.randn(3, 1, size, size)).shape == (3, model.feature_dim)
    assert (model.in_channels, model.mean, model.std) == (1, (0.5,), (0.5,))


def test_forward_is_head_of_neck_of_stages_and_stages_compose() -> None:
    model = build("smallcnn", 5, in_channels=1, seed=0).eval()
    x = torch.randn(2, 1, 8, 8)
    split = model.forward_stages(model.forward_stages(x, 0, 2), 2, None)
    torch.testing.assert_close(split, model.forward_stages(x))
    torch.testing.assert_close(model(x), model.head(model.neck(split)))
    assert not list(model.neck.parameters())


def test_state_dict_keys_are_stage_or_head_prefixed() -> None:
    model = build("smallcnn", 5, in_channels=1, seed=0)
    state = model.state_dict()
    for key in state:
        index = stage_index(key)
        assert key.startswith("head.") or (index is not None and 0 <= index < model.num_stages), key
    assert {stage_index(k) for k in state} == {0, 1, 2, 3, None}
    first_two = stage_state(state, range(2))
    assert first_two and all(k.startswith(("stages.0.", "stages.1.")) for k in first_two)
    assert len(first_two) == sum(1 for k in state if k.startswith(("stages.0.", "stages.1.")))


def _bn_means(model: nn.Module) -> list[torch.Tensor]:
    return [m.running_mean.clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def test_frozen_stages_stay_in_eval_mode_under_train() -> None:
    model = build("smallcnn", 5, in_channels=1, seed=0)
    model.frozen_stages = {0, 1}
    model.train()
    for index, stage in enumerate(model.stages):
        assert all(m.training == (index >= 2) for m in stage.modules()), index
    assert model.training and model.head.training
    before = _bn_means(model)
    model(torch.randn(8, 1, 8, 8) + 3.0)
    after = _bn_means(model)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert not torch.equal(before[2], after[2]) and not torch.equal(before[3], after[3])


def test_frozen_stages_apply_at_once_and_can_be_cleared() -> None:
    model = build("smallcnn", 5, in_channels=1, seed=0).train()
    model.frozen_stages = {3}
    assert not model.stages[3].training
    model.frozen_stages = set()
    assert model.stages[3].training
    model.eval()
    assert not any(m.training for m in model.modules())


def test_frozen_stages_out_of_range_names_the_stages() -> None:
    model = build("smallcnn", 5, in_channels=1)
    with pytest.raises(ValueError, match=r"\[4\] out of range.*conv1, conv2, conv3, conv4"):
        model.frozen_stages = {4}


def test_seed_makes_init_reproducible_without_touching_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = build("smallcnn", 5, in_channels=1, seed=7).state_dict()
    assert torch.equal(torch.rand(3), expected)
    b = build("smallcnn", 5, in_channels=1, seed=7).state_dict()
    c = build("smallcnn", 5, in_channels=1, seed=8).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["stages.0.conv.weight"], c["stages.0.conv.weight"])


def test_unknown_backbone_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet9'.*smallcnn"):
        build("resnet9", 5)
