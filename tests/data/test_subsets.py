"""images_per_label_indices: stratified, seeded, nested in k, only ever about the training set."""

from __future__ import annotations

import numpy as np
import pytest

from tunetl.data import DatasetSpec, images_per_label_indices, load_dataset


@pytest.fixture(scope="module")
def digits59():
    return load_dataset(DatasetSpec(builtin="digits", classes=[5, 6, 7, 8, 9]))


def test_exactly_k_per_class_sorted_and_within_train(digits59) -> None:
    labels = digits59.train.labels
    idx = images_per_label_indices(labels, 7, seed=3)
    assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)
    assert idx.max() < len(digits59.train)
    assert np.bincount(labels[idx]).tolist() == [7] * 5


def test_nested_in_k_for_a_fixed_seed(digits59) -> None:
    labels = digits59.train.labels
    small, mid, large = (images_per_label_indices(labels, k, seed=11) for k in (2, 5, 50))
    assert set(small) <= set(mid) <= set(large)


def test_seeded(digits59) -> None:
    labels = digits59.train.labels
    a = images_per_label_indices(labels, 5, seed=0)
    assert np.array_equal(a, images_per_label_indices(labels, 5, seed=0))
    assert not np.array_equal(a, images_per_label_indices(labels, 5, seed=1))


def test_all_returns_every_index(digits59) -> None:
    labels = digits59.train.labels
    assert np.array_equal(images_per_label_indices(labels, "all", seed=0), np.arange(labels.size))


def test_subsetting_never_touches_val(digits59) -> None:
    val_before = digits59.val.labels.copy()
    for k in (1, 5, "all"):
        idx = images_per_label_indices(digits59.train.labels, k, seed=0)
        x, _ = next(digits59.train.batches(idx, batch_size=len(idx)))
        assert x.shape[0] == len(idx)
    assert np.array_equal(digits59.val.labels, val_before)


def test_too_few_images_names_class_and_count() -> None:
    labels = np.array([0, 0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"class 'dog' has only 2"):
        images_per_label_indices(labels, 3, seed=0, class_names=["cat", "dog"])
    with pytest.raises(ValueError, match=r"class '1' has only 2"):
        images_per_label_indices(labels, 3, seed=0)


@pytest.mark.parametrize("k", [0, -1, "some", True])
def test_invalid_k(k) -> None:
    with pytest.raises(ValueError, match="images_per_label"):
        images_per_label_indices(np.array([0, 1]), k, seed=0)
