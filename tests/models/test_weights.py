"""Weights: non-state-dict files named, fitting onto a StagedModel, ImageNet offline (refused pickles:
tests/reliability/test_unsafe_files.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from tunetl.models import WeightsError, apply_weights, build, load_state_file


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"epoch": 3}, "entry 'epoch' is a int"),
        ([torch.zeros(1)], "found a list"),
        ({}, "an empty dict"),
    ],
)
def test_non_state_dicts_are_refused(tmp_path: Path, obj: object, message: str) -> None:
    path = tmp_path / "other.pt"
    torch.save(obj, path)
    with pytest.raises(WeightsError, match=message):
        load_state_file(path)


def test_unreadable_and_missing_files_are_named(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a torch file")
    with pytest.raises(WeightsError, match=r"could not read .*junk\.pt"):
        load_state_file(junk)
    with pytest.raises(WeightsError, match=r"nothere\.pt does not exist"):
        load_state_file(tmp_path / "nothere.pt")


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model"])
def test_state_dict_round_trip_and_checkpoint_wrappers(tmp_path: Path, wrapper: str | None) -> None:
    source = build("smallcnn", 5, in_channels=1, seed=0)
    state = source.state_dict()
    path = tmp_path / "w.pt"
    torch.save(state if wrapper is None else {wrapper: state, "epoch": 3}, path)
    loaded = build("smallcnn", 5, in_channels=1, weights=path, seed=1).state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_wrong_architecture_names_keys_and_backbone(tmp_path: Path) -> None:
    path = tmp_path / "mobilenet.pt"
    torch.save(build("mobilenet_v3_small", 5, seed=0).state_dict(), path)
    with pytest.raises(WeightsError) as info:
        build("smallcnn", 5, weights=path)
    message = str(info.value)
    assert "backbone 'smallcnn'" in message and "mobilenet.pt" in message
    assert "missing keys 24: stages.0.conv.weight" in message
    assert "unexpected keys" in message and "more)" in message


def test_wrong_shape_is_named() -> None:
    model = build("smallcnn", 5, in_channels=1, seed=0)
    state = model.state_dict()
    state["stages.3.conv.weight"] = torch.zeros(8, 64, 3, 3)
    with pytest.raises(
        WeightsError,
        match=r"stages\.3\.conv\.weight \(file \(8, 64, 3, 3\) vs model \(128, 64, 3, 3\)\)",
    ):
        apply_weights(model, state)


def test_head_of_another_class_count_is_skipped_unless_strict() -> None:
    source = build("smallcnn", 10, in_channels=1, seed=0).state_dict()
    target = build("smallcnn", 5, in_channels=1, seed=1)
    fresh_head = target.head.weight.clone()
    assert apply_weights(target, source) == ["head.bias", "head.weight"]
    assert torch.equal(target.head.weight, fresh_head)
    assert torch.equal(target.state_dict()["stages.2.conv.weight"], source["stages.2.conv.weight"])
    with pytest.raises(WeightsError, match=r"head does not fit.*\(10, 128\) vs model \(5, 128\)"):
        apply_weights(target, source, strict_head=True)


def test_head_of_another_kind_is_skipped_and_matching_head_is_loaded() -> None:
    source = build("smallcnn", 5, in_channels=1, head="mlp2", hidden=16, seed=0).state_dict()
    target = build("smallcnn", 5, in_channels=1, seed=1)
    assert len(apply_weights(target, source)) == 6
    same = build("smallcnn", 5, in_channels=1, head="mlp2", hidden=16, seed=2)
    assert apply_weights(same, source) == []
    assert torch.equal(same.state_dict()["head.6.weight"], source["head.6.weight"])


def _offline(monkeypatch: pytest.MonkeyPatch, torch_home: Path) -> None:
    """No network for this process: every HTTP(S) request goes to a closed local port."""
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.timeout(120)
def test_imagenet_offline_fails_with_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _offline(monkeypatch, tmp_path)
    with pytest.raises(WeightsError) as info:
        build("resnet18", 5, weights="imagenet")
    message = str(info.value)
    expected_file = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert str(expected_file) in message
    assert "TORCH_HOME" in message and "weights_file" in message
    assert not expected_file.exists()


def test_imagenet_weights_from_the_hub_cache_fit_a_grayscale_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cached file is used without network and mapped onto stages; RGB kernels are summed."""
    _offline(monkeypatch, tmp_path)
    torch.manual_seed(0)
    state = torchvision.models.resnet18().state_dict()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(state, cache / "resnet18-f37072fd.pth")
    model = build("resnet18", 5, in_channels=1, weights="imagenet", seed=1)
    got = model.state_dict()
    torch.testing.assert_close(
        got["stages.0.conv1.weight"], state["conv1.weight"].sum(1, keepdim=True)
    )
    assert torch.equal(got["stages.4.1.conv2.weight"], state["layer4.1.conv2.weight"])
    assert got["head.weight"].shape == (5, 512)


def test_smallcnn_has_no_imagenet_weights() -> None:
    with pytest.raises(WeightsError, match="'smallcnn' has no ImageNet weights"):
        build("smallcnn", 5, weights="imagenet")
