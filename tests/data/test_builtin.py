"""Built-in datasets: digits and mnist5k load offline with the right shapes, labels and subsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tunetl.data import BUILTINS, DataError, DatasetSpec, load_dataset


def _all_images(images) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*images.batches(batch_size=512), strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_digits_loads_full_dataset() -> None:
    data = load_dataset(DatasetSpec(builtin="digits"))
    assert data.name == "digits"
    assert data.class_names == [str(c) for c in range(10)]
    assert data.in_channels == 1 and data.image_size == (8, 8)
    assert len(data.train) + len(data.val) == 1797
    x, y = _all_images(data.train)
    assert x.dtype == torch.uint8 and x.shape == (len(data.train), 1, 8, 8)
    assert y.dtype == torch.int64 and np.array_equal(y.numpy(), data.train.labels)
    assert int(x.max()) == 255 and int(x.min()) == 0


def test_digits_pixels_match_scikit_learn() -> None:
    from sklearn.datasets import load_digits

    ref = load_digits()
    raw = BUILTINS["digits"]()
    assert np.array_equal(raw.labels, ref.target)
    assert np.array_equal(raw.images[:, 0], np.rint(ref.images * 255 / 16).astype(np.uint8))


def test_class_subset_is_remapped_in_the_order_given() -> None:
    data = load_dataset(DatasetSpec(builtin="digits", classes=[9, 5, 7]))
    assert data.name == "digits[9,5,7]"
    assert data.class_names == ["9", "5", "7"]
    raw = BUILTINS["digits"]()
    for images in (data.train, data.val):
        assert set(np.unique(images.labels)) == {0, 1, 2}
    # label 0 must be the nines: every train image with label 0 is a raw image of class 9
    nines = {raw.images[i].tobytes() for i in np.flatnonzero(raw.labels == 9)}
    x, y = _all_images(data.train)
    assert all(img.numpy().tobytes() in nines for img in x[y == 0])
    assert len(data.train) + len(data.val) == int(np.isin(raw.labels, [9, 5, 7]).sum())


def test_unknown_builtin_lists_available_ones() -> None:
    with pytest.raises(DataError, match="unknown builtin 'cifar'.*digits.*mnist5k"):
        load_dataset(DatasetSpec(builtin="cifar"))


def test_unknown_class_lists_available_ones() -> None:
    with pytest.raises(DataError, match="no class 'seven'.*0, 1, 2"):
        load_dataset(DatasetSpec(builtin="digits", classes=["seven"]))


def test_mnist5k_has_500_per_class() -> None:
    data = load_dataset(DatasetSpec(builtin="mnist5k"))
    assert data.image_size == (28, 28) and data.in_channels == 1
    counts = np.bincount(np.concatenate([data.train.labels, data.val.labels]))
    assert counts.tolist() == [500] * 10
    assert np.bincount(data.val.labels).tolist() == [150] * 10
    x, _ = next(data.train.batches(batch_size=16))
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.uint8
