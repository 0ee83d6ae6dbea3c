"""PBT's exploit without Ray: a runner built with perturbed learning rates that loads another trial's
state keeps the donor's weights and momentum but trains at its own (new) rates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tunetl.config import load_experiment
from tunetl.params import TrialParams
from tunetl.trial import TrialRunner

ROOT = Path(__file__).resolve().parents[2]


def test_loaded_state_keeps_the_new_learning_rates() -> None:
    exp = load_experiment(ROOT / "experiments" / "quickstart.yaml", overrides=["training.epochs=2"])
    donor = TrialRunner(TrialParams(transfer_depth=0, images_per_label=5, lr_scale=1.0), exp, seed=0)
    donor.run_epoch()
    state = donor.state_dict()
    taker = TrialRunner(TrialParams(transfer_depth=0, images_per_label=5, lr_scale=1.2), exp, seed=0)
    taker.load_state_dict(state)
    assert [g["lr"] for g in taker.optimizer.param_groups] == pytest.approx(
        [1.2 * g["lr"] for g in donor.optimizer.param_groups])
    for a, b in zip(taker.model.state_dict().values(), donor.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    momentum = [taker.optimizer.state[p]["momentum_buffer"] for g in taker.optimizer.param_groups for p in g["params"]]
    assert all(m is not None for m in momentum) and taker.epoch == 1
