"""Class subsets, the fixed validation split and seeded images-per-label subsets.

All three are pure numpy on label arrays, so they are cheap to test and identical for every loader.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tunetl.data.spec import DataError


def resolve_classes(
    requested: Sequence[int | str] | None, class_names: Sequence[str], dataset: str
) -> list[int]:
    """Map a spec's `classes` to indices into `class_names`, in the order given.

    An entry matches a class name first (`5` matches folder "5"); an integer that names no class is
    taken as a label index. With no subset every class is kept in its own order.
    """
    if requested is None:
        return list(range(len(class_names)))
    by_name = {name: i for i, name in enumerate(class_names)}
    chosen: list[int] = []
    for entry in requested:
        if str(entry) in by_name:
            idx = by_name[str(entry)]
        elif isinstance(entry, int) and 0 <= entry < len(class_names):
            idx = entry
        else:
            raise DataError(
                f"dataset {dataset}: no class {entry!r}; available classes: {', '.join(class_names)}"
            )
        if idx in chosen:
            raise DataError(f"dataset {dataset}: class {class_names[idx]!r} is listed twice in `classes`")
        chosen.append(idx)
    return chosen


def remap_labels(labels: np.ndarray, chosen: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Keep the images of the `chosen` classes: (positions kept, their labels renumbered 0..K-1)."""
    labels = np.asarray(labels, dtype=np.int64)
    lookup = np.full(int(labels.max(initial=0)) + 1, -1, dtype=np.int64)
    for new, old in enumerate(chosen):
        if old < lookup.size:
            lookup[old] = new
    new_labels = lookup[labels]
    keep = np.flatnonzero(new_labels >= 0)
    return keep, new_labels[keep]


def stratified_split(
    labels: np.ndarray,
    val_fraction: float,
    seed: int,
    class_keys: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    *,
    held_out: str = "validation",
    stream: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fixed train/validation split: `round(val_fraction * n_c)` (>= 1) images of each class to val.

    Each class is shuffled by its own generator seeded with (seed, class_keys[c]), where the key is the
    class's index in the full dataset: a class's validation images do not change when other classes are
    added to or removed from the subset. Returns sorted (train, val) positions into `labels`.
    `stream` gives another split a generator of its own (the test split), `held_out` names it in errors.
    """
    labels = np.asarray(labels, dtype=np.int64)
    num_classes = len(class_names) if class_names is not None else int(labels.max(initial=-1)) + 1
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        name = class_names[c] if class_names is not None else str(c)
        if members.size < 2:
            raise DataError(
                f"class {name!r} has {members.size} image(s) left; a class needs at least 2 here "
                f"(one for training, one for {held_out})"
            )
        n_val = min(max(1, round(val_fraction * members.size)), members.size - 1)
        key = class_keys[c] if class_keys is not None else c
        entropy = [seed, key] if stream is None else [seed, key, stream]
        perm = np.random.default_rng(entropy).permutation(members)
        val.append(perm[:n_val])
        train.append(perm[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def split_three_ways(
    labels: np.ndarray,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    class_keys: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) positions: the test split is carved first (its own generator, `test_fraction`
    of each class), the validation split from what is left; with `test_fraction == 0` the test split is
    empty and train/val are exactly `stratified_split`'s."""
    labels = np.asarray(labels, dtype=np.int64)
    if test_fraction <= 0:
        train, val = stratified_split(labels, val_fraction, seed, class_keys, class_names)
        return train, val, np.zeros(0, dtype=np.int64)
    rest, test = stratified_split(labels, test_fraction, seed, class_keys, class_names, held_out="test", stream=1)
    train, val = stratified_split(labels[rest], val_fraction, seed, class_keys, class_names)
    return rest[train], rest[val], test


def images_per_label_indices(
    labels: np.ndarray,
    k: int | str,
    seed: int,
    class_names: Sequence[str] | None = None,
) -> np.ndarray:
    """Sorted indices of `k` images per class (`"all"`: every index), seeded and nested in k.

    Each class is permuted by a generator seeded with (seed, class) and its first k images are taken,
    so for a fixed seed the k=10 subset contains the k=5 one: results across k differ only by the
    images added, not by a reshuffle.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if k == "all":
        return np.arange(labels.size, dtype=np.int64)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"images_per_label must be a positive integer or 'all', got {k!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    classes = range(len(class_names)) if class_names is not None else np.unique(labels).tolist()
    picked: list[np.ndarray] = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        if members.size < k:
            name = class_names[c] if class_names is not None else str(c)
            raise ValueError(
                f"images_per_label={k} but class {name!r} has only {members.size} training images; "
                f"use images_per_label <= {members.size} or 'all'"
            )
        picked.append(np.random.default_rng([seed, int(c)]).permutation(members)[:k])
    if not picked:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(picked)).astype(np.int64)
