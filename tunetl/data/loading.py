"""`load_dataset`: a spec to its loader (built-in or folder); kept apart from `spec` so the loaders can
import the spec's types without an import circle."""

from __future__ import annotations

from tunetl.data.imageset import TaskData
from tunetl.data.spec import MEMORY_LIMIT_BYTES, DatasetSpec


def load_dataset(
    spec: DatasetSpec,
    *,
    image_size: int | tuple[int, int] | None = None,
    memory_limit_bytes: int = MEMORY_LIMIT_BYTES,
    num_workers: int = 0,
) -> TaskData:
    """Load the dataset a spec names, subset its classes and split off the fixed validation set.

    `image_size`, `memory_limit_bytes` and `num_workers` apply to folder datasets only: the common
    (H, W) to resize to (default: the median size), the in-memory budget, and the streaming loader's
    worker count.
    """
    if spec.builtin is not None:
        from tunetl.data.builtin import load_builtin

        return load_builtin(spec)
    from tunetl.data.folder import load_folder

    return load_folder(
        spec, image_size=image_size, memory_limit_bytes=memory_limit_bytes, num_workers=num_workers
    )
