"""Preprocess numerics and augment_batch determinism."""

from __future__ import annotations

import pytest
import torch

from tunetl.data import DatasetSpec, Preprocess, augment_batch, load_dataset


def test_uint8_to_unit_float_and_normalise_per_channel() -> None:
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).reshape(1, 1, 1, 3).repeat(2, 3, 1, 1)
    out = Preprocess(None, 3, mean=(0.0, 0.2, 0.5), std=(1.0, 0.5, 0.25))(x)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 1, 3)
    expected = torch.tensor([[0.0, 0.2, 1.0], [-0.4, 0.0, 1.6], [-2.0, -1.2, 2.0]])
    torch.testing.assert_close(out[0, :, 0, :], expected)


def test_float_input_is_taken_as_unit_range_and_scalar_stats_broadcast() -> None:
    x = torch.full((1, 3, 2, 2), 0.75)
    out = Preprocess(None, 3, mean=0.5, std=0.5)(x)
    torch.testing.assert_close(out, torch.full((1, 3, 2, 2), 0.5))


def test_gray_to_rgb_repeats_and_rgb_to_gray_averages() -> None:
    gray = torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8)
    rgb = Preprocess(None, 3)(gray)
    assert rgb.shape == (2, 3, 4, 4)
    assert torch.equal(rgb[:, 0], rgb[:, 2]) and torch.allclose(rgb[:, 1:2], gray.float() / 255)
    color = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(Preprocess(None, 1)(color), color.mean(dim=1, keepdim=True))


def test_resize_to_size_and_constant_image_stays_constant() -> None:
    x = torch.full((2, 1, 8, 8), 128, dtype=torch.uint8)
    out = Preprocess(32, 3, mean=0.5, std=0.25)(x)
    assert out.shape == (2, 3, 32, 32)
    torch.testing.assert_close(out, torch.full_like(out, (128 / 255 - 0.5) / 0.25))
    assert Preprocess((5, 7), 1)(torch.rand(1, 1, 20, 20)).shape == (1, 1, 5, 7)


def test_preprocess_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="mean has 2 values"):
        Preprocess(None, 3, mean=(0.1, 0.2))
    with pytest.raises(ValueError, match="std must be positive"):
        Preprocess(None, 1, std=0.0)


def test_buffers_follow_the_module_to_a_dtype_device() -> None:
    module = Preprocess(None, 3, mean=(0.1, 0.2, 0.3), std=0.5).to(torch.float64)
    assert module.mean.dtype == torch.float64 and module.mean.shape == (1, 3, 1, 1)


@pytest.fixture(scope="module")
def digit_batch() -> torch.Tensor:
    data = load_dataset(DatasetSpec(builtin="digits"))
    return next(data.train.batches(batch_size=64))[0]


def test_augment_is_deterministic_per_generator_and_changes_images(digit_batch: torch.Tensor) -> None:
    a = augment_batch(digit_batch, torch.Generator().manual_seed(0))
    b = augment_batch(digit_batch, torch.Generator().manual_seed(0))
    c = augment_batch(digit_batch, torch.Generator().manual_seed(1))
    assert a.dtype == torch.uint8 and a.shape == digit_batch.shape
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    changed = (a != digit_batch).flatten(1).any(dim=1)
    assert changed.float().mean() > 0.5


def test_augment_matches_pad_crop_flip_reference(digit_batch: torch.Tensor) -> None:
    """Each output is a crop of the padded image, possibly mirrored: check against F.pad."""
    x = digit_batch.float()
    for mode, pad_mode in (("reflect", "reflect"), ("zeros", "constant")):
        out = augment_batch(x, torch.Generator().manual_seed(3), padding_mode=mode)
        padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode=pad_mode)
        for i in range(x.shape[0]):
            crops = [padded[i, :, dy : dy + 8, dx : dx + 8] for dy in range(3) for dx in range(3)]
            candidates = crops + [crop.flip(-1) for crop in crops]
            assert any(torch.equal(out[i], crop) for crop in candidates)


def test_augment_without_flip_never_mirrors() -> None:
    x = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4).repeat(32, 1, 1, 1)
    out = augment_batch(x, torch.Generator().manual_seed(0), flip=False, pad=0)
    assert torch.equal(out, x)
    flipped = augment_batch(x, torch.Generator().manual_seed(0), pad=0)
    assert any(torch.equal(img, x[0].flip(-1)) for img in flipped)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_transforms_run_on_cuda_like_on_cpu(digit_batch: torch.Tensor) -> None:
    cpu = augment_batch(digit_batch, torch.Generator().manual_seed(5))
    gpu = augment_batch(digit_batch.cuda(), torch.Generator().manual_seed(5))
    assert gpu.is_cuda and torch.equal(gpu.cpu(), cpu)
    module = Preprocess(16, 3, mean=(0.1, 0.2, 0.3), std=0.5)
    torch.testing.assert_close(module.cuda()(gpu).cpu(), module.cpu()(cpu), atol=1e-5, rtol=1e-5)
