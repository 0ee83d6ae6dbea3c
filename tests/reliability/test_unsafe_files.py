"""Unsafe files: a weights file or an experiment YAML that carries code must be refused without running it.

Each payload is real (the control test shows it runs under full unpickling): it creates a marker file,
and the tests assert the marker never appears.
"""

from __future__ import annotations

import builtins
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from tunetl.config import ConfigError, load_experiment
from tunetl.models import WeightsError, load_state_file


class _Payload:
    """Unpickling this calls open(marker, "w"): the file appears iff the payload ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (builtins.open, (str(self.marker), "w"))


@pytest.fixture
def payload_file(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pt"
    torch.save({"stages.0.conv.weight": torch.zeros(1), "x": _Payload(marker)}, path)
    return path, marker


def test_payload_is_real_when_unpickled_unsafely(payload_file: tuple[Path, Path]) -> None:
    """Control: the payload does run under full unpickling, so the refusals below mean something."""
    path, marker = payload_file
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("force_unsafe", [False, True])
def test_reduce_payload_is_refused_and_never_runs(
    payload_file: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, force_unsafe: bool
) -> None:
    path, marker = payload_file
    if force_unsafe:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(WeightsError, match=r"refused .*evil\.pt.*not a plain state dict"):
        load_state_file(path)
    assert not marker.exists()
    assert os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") == ("1" if force_unsafe else None)


def test_pickled_module_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "module.pt"
    torch.save(nn.Linear(2, 2), path)
    with pytest.raises(WeightsError, match="refused"):
        load_state_file(path)


def test_python_tags_are_refused_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "exp.yaml"
    path.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\ndataset: {{builtin: digits}}\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_experiment(path)
    assert not marker.exists()
