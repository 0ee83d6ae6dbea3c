"""Backbone families end to end: torchvision, timm CNN, timm ViT, EfficientNet-Lite with its shipped weights.

timm's `test_*` models (a few hundred thousand parameters, random init) stand in for real timm models; the
stage split is checked against timm's own forward when it is built.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tunetl.data import Preprocess
from tunetl.models import backbone_stages, build
from tunetl.models.weights import WeightsError
from tunetl.params import ResolvedParams, TrialParams
from tunetl.transfer import prepare_model

FAMILIES = [
    ("resnet18", None, 32),
    ("timm/test_resnet", None, 32),
    ("timm/test_vit", None, 32),
    ("efficientnet_lite0", "imagenet", 32),
]


def _resolved(num_stages: int, frozen: int) -> ResolvedParams:
    return TrialParams(transfer_depth=num_stages, frozen_depth=frozen).resolved(num_stages, 0.01, False, "sgd")


@pytest.mark.parametrize(("name", "weights", "size"), FAMILIES)
def test_family_builds_in_stages_and_frozen_stages_get_no_gradient(name: str, weights: str | None, size: int) -> None:
    stages = backbone_stages(name)
    source = build(name, num_classes=1000 if weights else 3, weights=weights, seed=0)
    assert source.stage_names == stages
    owned = {id(p) for p in source.stages.parameters()} | {id(p) for p in source.head.parameters()}
    assert owned == {id(p) for p in source.parameters()}  # every parameter is in a stage or the head
    assert all(any(True for _ in s.parameters()) for s in source.stages)  # no empty stage
    state = {k: v.detach() for k, v in source.state_dict().items()}

    frozen = 2
    prepared = prepare_model(name, num_classes=3, in_channels=3, params=_resolved(len(stages), frozen),
                             source_state=state, seed=0)
    model = prepared.model
    assert prepared.frozen_prefix == frozen
    assert torch.equal(model.state_dict()["stages.0." + next(iter(model.stages[0].state_dict()))],
                       state["stages.0." + next(iter(model.stages[0].state_dict()))])
    model.train()
    x = torch.randn(4, 3, size, size)
    model(x).logsumexp(1).sum().backward()
    for i, stage in enumerate(model.stages):
        grads = [p.grad for p in stage.parameters()]
        if i < frozen:
            assert all(g is None for g in grads), f"{name}: frozen stage {i} got a gradient"
            assert not stage.training
        else:
            assert any(g is not None and g.abs().sum() > 0 for g in grads), f"{name}: stage {i} got no gradient"


def test_lite0_shipped_imagenet_weights_classify_real_photos() -> None:
    """skimage ships these photos: a tabby cat (chelsea) and a cup of espresso (coffee)."""
    skdata = pytest.importorskip("skimage.data")
    model = build("efficientnet_lite0", num_classes=1000, weights="imagenet").eval()
    pre = Preprocess(224, 3, model.mean, model.std)
    photos = torch.stack([
        torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float(),
                                        size=(224, 224), mode="bilinear", antialias=True)[0].round().to(torch.uint8)
        for img in (skdata.chelsea(), skdata.coffee())
    ])
    with torch.no_grad():
        top = model(pre(photos)).argmax(1).tolist()
    assert 281 <= top[0] <= 285  # ImageNet's domestic cats (285: Egyptian cat)
    assert top[1] in (967, 968, 504)  # espresso, cup, coffee mug
    fresh = build("efficientnet_lite0", num_classes=1000, seed=0).eval()
    with torch.no_grad():
        assert fresh(pre(photos)).argmax(1).tolist() != top


def test_lite_preprocessing_is_its_own() -> None:
    model = build("efficientnet_lite1", num_classes=2)
    pre = Preprocess(None, 3, model.mean, model.std)
    x = torch.tensor([0, 127, 255], dtype=torch.uint8).reshape(1, 3, 1, 1)
    assert torch.allclose(pre(x).flatten(), (x.float().flatten() - 127) / 128, atol=1e-5)
    assert model.input_size == 240


def test_timm_weights_file_in_timm_layout_and_safetensors(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    reference = timm.create_model("test_resnet", num_classes=0).eval()
    file = tmp_path / "test_resnet.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(file))
    model = build("timm/test_resnet", num_classes=4, weights=str(file)).eval()
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        assert torch.allclose(model.features(x), reference(x), atol=1e-5)
    # a staged file saved from tunetl loads too
    staged = tmp_path / "staged.pt"
    torch.save(model.state_dict(), staged)
    again = build("timm/test_resnet", num_classes=4, weights=str(staged)).eval()
    with torch.no_grad():
        assert torch.allclose(again(x), model(x), atol=1e-5)


def test_unknown_backbones_are_named() -> None:
    with pytest.raises(ValueError, match="timm/<name>"):
        backbone_stages("resnet9000")
    with pytest.raises(ValueError, match="timm has no model"):
        backbone_stages("timm/not_a_model_xyz")
    with pytest.raises(WeightsError, match="no ImageNet weights"):
        build("smallcnn", num_classes=2, weights="imagenet")


@pytest.mark.parametrize(("fraction", "stages", "depth"), [(0.0, 5, 0), (0.5, 5, 3), (0.5, 4, 2), (1.0, 7, 7),
                                                            (0.25, 5, 1), (0.3, 7, 2)])
def test_fractions_round_to_stages(fraction: float, stages: int, depth: int) -> None:
    params = TrialParams(transfer_fraction=1.0, frozen_fraction=fraction).resolved(stages, 0.01, False, "sgd")
    assert params.frozen_depth == depth and params.transfer_depth == stages


def test_fraction_and_depth_exclude_each_other() -> None:
    with pytest.raises(ValueError, match="not both"):
        TrialParams(transfer_depth=2, transfer_fraction=0.5)
    with pytest.raises(ValueError, match="only transferred"):
        TrialParams(transfer_fraction=0.2, frozen_fraction=0.5)
