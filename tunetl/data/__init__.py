"""Datasets for tunetl: specs, loading (built-ins, ImageFolder), splits, subsets and batch transforms.

Names are imported lazily (PEP 562) so that `from tunetl.data import DatasetSpec` stays cheap for the
config layer and the CLI, while loaders pull in torch, numpy and Pillow only when used.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "DataError": "spec",
    "DatasetSpec": "spec",
    "MEMORY_LIMIT_BYTES": "spec",
    "load_dataset": "loading",
    "ImageSet": "imageset",
    "TensorImageSet": "imageset",
    "StreamingImageSet": "imageset",
    "TaskData": "imageset",
    "BUILTINS": "builtin",
    "RawImages": "builtin",
    "register_builtin": "builtin",
    "images_per_label_indices": "subsets",
    "stratified_split": "subsets",
    "Preprocess": "transforms",
    "augment_batch": "transforms",
}

__all__ = [
    "BUILTINS",
    "DataError",
    "DatasetSpec",
    "ImageSet",
    "MEMORY_LIMIT_BYTES",
    "Preprocess",
    "RawImages",
    "StreamingImageSet",
    "TaskData",
    "TensorImageSet",
    "augment_batch",
    "images_per_label_indices",
    "load_dataset",
    "register_builtin",
    "stratified_split",
]

if TYPE_CHECKING:
    from tunetl.data.builtin import BUILTINS, RawImages, register_builtin
    from tunetl.data.imageset import ImageSet, StreamingImageSet, TaskData, TensorImageSet
    from tunetl.data.loading import load_dataset
    from tunetl.data.spec import MEMORY_LIMIT_BYTES, DataError, DatasetSpec
    from tunetl.data.subsets import images_per_label_indices, stratified_split
    from tunetl.data.transforms import Preprocess, augment_batch


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tunetl.data' has no attribute {name!r}")
    value = getattr(import_module(f"tunetl.data.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
