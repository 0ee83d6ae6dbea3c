"""The validation split: fixed by the spec, disjoint from train, stratified."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tunetl.data import BUILTINS, DataError, DatasetSpec, load_dataset, stratified_split


def _image_keys(images) -> list[bytes]:
    return [
        img.numpy().tobytes() + bytes([int(lbl)])
        for x, y in images.batches(batch_size=256)
        for img, lbl in zip(x, y, strict=True)
    ]


def test_split_ignores_global_seeds() -> None:
    spec = DatasetSpec(builtin="digits", classes=[5, 6, 7, 8, 9])
    torch.manual_seed(1)
    np.random.seed(1)
    first = load_dataset(spec)
    torch.manual_seed(2)
    np.random.seed(2)
    second = load_dataset(spec)
    assert _image_keys(first.val) == _image_keys(second.val)
    assert _image_keys(first.train) == _image_keys(second.train)


def test_split_seed_changes_the_split() -> None:
    a = load_dataset(DatasetSpec(builtin="digits", split_seed=0))
    b = load_dataset(DatasetSpec(builtin="digits", split_seed=1))
    assert _image_keys(a.val) != _image_keys(b.val)


def test_split_is_disjoint_stratified_and_sized_by_fraction() -> None:
    labels = BUILTINS["digits"]().labels
    train, val = stratified_split(labels, 0.3, seed=0)
    assert np.intersect1d(train, val).size == 0
    assert np.union1d(train, val).size == labels.size
    for c in range(10):
        n_c = int((labels == c).sum())
        assert int((labels[val] == c).sum()) == round(0.3 * n_c)


def test_class_val_images_do_not_depend_on_the_other_classes() -> None:
    full = load_dataset(DatasetSpec(builtin="digits"))
    sub = load_dataset(DatasetSpec(builtin="digits", classes=[7, 3]))
    full_sevens = {k[:-1] for k in _image_keys(full.val) if k[-1] == 7}
    sub_sevens = {k[:-1] for k in _image_keys(sub.val) if k[-1] == 0}
    assert full_sevens == sub_sevens


def test_every_class_gets_at_least_one_val_image() -> None:
    labels = np.array([0, 0, 1, 1, 1])
    train, val = stratified_split(labels, 0.01, seed=0)
    assert sorted(labels[val].tolist()) == [0, 1]
    assert sorted(labels[train].tolist()) == [0, 1, 1]


def test_class_with_one_image_is_an_error_naming_it() -> None:
    with pytest.raises(DataError, match="'b' has 1 image"):
        stratified_split(np.array([0, 0, 1]), 0.3, seed=0, class_names=["a", "b"])
