"""ImageFolder datasets: one sub-folder per class, decoded with Pillow to one common shape.

The channel count and image size are decided once from the file headers (cheap: Pillow reads only the
header on open), so that every batch has one shape whether images are held in memory or streamed.
Every file is checked before that (`tunetl.data.scan`), so a bad file never surfaces mid-search.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tunetl.data.imageset import ImageSet, StreamingImageSet, TaskData, TensorImageSet
from tunetl.data.scan import (
    ScanReport,
    class_entries,
    corrupt_reason,
    decode_problem,
    open_image,
    parallel_map,
    scan_folder,
)
from tunetl.data.spec import MEMORY_LIMIT_BYTES, DataError, DatasetSpec
from tunetl.data.subsets import resolve_classes, split_three_ways

#: Pillow modes treated as grayscale; a folder is 1-channel only when every image is one of these.
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N"})


def _unreadable(path: str | Path, exc: Exception) -> DataError:
    return DataError(f"cannot read image {path}: {exc}; fix or remove the file")


def class_folders(root: Path) -> list[str]:
    """Sorted names of the class sub-folders of `root`: hidden ones and links leaving `root` skipped."""
    return class_entries(root)[0]


def _to_gray(img: Image.Image) -> Image.Image:
    """8-bit grayscale; 16/32-bit integer images are scaled from the 16-bit range, not clipped."""
    if img.mode.startswith("I"):
        arr = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.rint(arr / 257.0).clip(0, 255).astype(np.uint8), mode="L")
    return img.convert("L")


def decode_image(path: str, channels: int, size: tuple[int, int]) -> np.ndarray:
    """Decode one file to uint8 (channels, H, W), converted and resized (bilinear) to `size`."""
    try:
        with open_image(path) as img:
            img.load()
            return image_to_array(img, channels, size)
    except Exception as exc:  # Pillow raises many types (SyntaxError, KeyError, ...) on malformed bytes
        raise _unreadable(path, exc) from exc


def image_to_array(img: Image.Image, channels: int, size: tuple[int, int]) -> np.ndarray:
    """A decoded image -> uint8 (channels, H, W) at `size`: the one conversion training and inference share."""
    if channels == 1 or img.mode in GRAY_MODES:
        img = _to_gray(img)
    if channels == 3:
        img = img.convert("RGB")
    height, width = size
    if (img.height, img.width) != (height, width):
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    arr = np.array(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))


#: Smallest median side an ImageFolder may have without `image_size` (1x1 images pass no backbone).
MIN_SIDE = 4


def _common_size(sizes: np.ndarray, hint: int | tuple[int, int] | None) -> tuple[int, int]:
    if hint is not None:
        height, width = (hint, hint) if isinstance(hint, int) else hint
        if height < 1 or width < 1:
            raise DataError(f"image_size must be positive, got {hint!r}")
        return int(height), int(width)
    median = np.median(sizes, axis=0)
    height, width = int(round(median[0])), int(round(median[1]))
    if min(height, width) < MIN_SIDE:
        raise DataError(
            f"images are {height}x{width} pixels (median): too small for any backbone's stages; give at least "
            f"{MIN_SIDE}x{MIN_SIDE} images or set training.image_size (e.g. 32) to resize them"
        )
    return height, width


def _shape(report: ScanReport, hint: int | tuple[int, int] | None) -> tuple[int, tuple[int, int]]:
    """(channels, (H, W)) every image is decoded to, from the headers of the files the scan kept."""
    infos = [f for files in report.images.values() for f in files]
    channels = 1 if all(f.mode in GRAY_MODES for f in infos) else 3
    return channels, _common_size(np.asarray([(f.height, f.width) for f in infos]), hint)


def _decode_into(out: np.ndarray, paths: list[str], channels: int, size: tuple[int, int]) -> dict[str, str]:
    """Decode every file into `out` on a few threads; {path: reason} of those that fail to decode.

    This full decode is also the scan's truncation/corruption check for folders held in memory, so no
    file is decoded twice.
    """

    def one(i: int) -> str | None:
        try:
            out[i] = decode_image(paths[i], channels, size)
        except DataError as exc:
            return corrupt_reason(exc.__cause__ or exc)
        return None

    reasons = parallel_map(one, range(len(paths)))
    return {p: r for p, r in zip(paths, reasons, strict=True) if r is not None}


def load_folder(
    spec: DatasetSpec,
    *,
    image_size: int | tuple[int, int] | None = None,
    memory_limit_bytes: int = MEMORY_LIMIT_BYTES,
    num_workers: int = 0,
) -> TaskData:
    """Load an ImageFolder: in memory when its decoded pixels fit `memory_limit_bytes`, else streamed.

    Every file is checked first (`tunetl.data.scan`); bad ones fail the load or, with
    `spec.bad_files == "skip"`, are left out and listed in `TaskData.skipped_files`.
    """
    assert spec.path is not None
    root = Path(spec.path).expanduser().resolve()  # trials read streamed files from other working dirs
    all_names = class_folders(root)
    chosen = resolve_classes(spec.classes, all_names, str(root))
    class_names = [all_names[c] for c in chosen]

    report = scan_folder(root, class_names, decode=False)
    if report.empty_classes():
        report.enforce(spec.bad_files)  # raises: a class has nothing left to decode
    paths = [f.path for name in class_names for f in report.images[name]]
    channels, size = _shape(report, image_size)
    in_memory = len(paths) * channels * size[0] * size[1] <= memory_limit_bytes
    if in_memory:
        pixels = np.empty((len(paths), channels, *size), dtype=np.uint8)
        failed = _decode_into(pixels, paths, channels, size)
    else:
        problems = parallel_map(decode_problem, paths)
        failed = {p: r for p, r in zip(paths, problems, strict=True) if r is not None}
    report = report.without(failed)
    report.enforce(spec.bad_files)
    if failed:
        kept = [i for i, p in enumerate(paths) if p not in failed]
        paths = [paths[i] for i in kept]
        new_channels, new_size = _shape(report, image_size)
        if in_memory and (new_channels, new_size) == (channels, size):
            pixels = pixels[kept]
        elif in_memory:
            pixels = np.empty((len(paths), new_channels, *new_size), dtype=np.uint8)
            if _decode_into(pixels, paths, new_channels, new_size):
                raise DataError(f"files under {root} changed while loading; load again")
        channels, size = new_channels, new_size

    label_arr = np.asarray(
        [label for label, name in enumerate(class_names) for _ in report.images[name]], dtype=np.int64
    )
    train_idx, val_idx, test_idx = split_three_ways(
        label_arr, spec.val_fraction, spec.test_fraction, spec.split_seed, chosen, class_names
    )
    train: ImageSet
    val: ImageSet
    test: ImageSet | None = None
    if in_memory:
        images = torch.from_numpy(pixels)
        train = TensorImageSet(images[torch.from_numpy(train_idx)], label_arr[train_idx])
        val = TensorImageSet(images[torch.from_numpy(val_idx)], label_arr[val_idx])
        if test_idx.size:
            test = TensorImageSet(images[torch.from_numpy(test_idx)], label_arr[test_idx])
    else:
        decode = partial(decode_image, channels=channels, size=size)

        def stream(idx: np.ndarray) -> StreamingImageSet:
            return StreamingImageSet(
                [paths[i] for i in idx], label_arr[idx], decode, channels, size, num_workers
            )

        train, val = stream(train_idx), stream(val_idx)
        test = stream(test_idx) if test_idx.size else None
    if spec.test_path is not None:
        test = _test_folder(spec, class_names, channels, size, memory_limit_bytes, num_workers)
    return TaskData(
        name=spec.display_name(),
        class_names=class_names,
        train=train,
        val=val,
        in_channels=channels,
        image_size=size,
        skipped_files=report.skipped,
        test=test,
    )


def _test_folder(
    spec: DatasetSpec, class_names: list[str], channels: int, size: tuple[int, int],
    memory_limit_bytes: int, num_workers: int,
) -> ImageSet:
    """`test_path`: a folder with the training folder's class sub-folders, decoded to the same shape.
    It is checked like the training folder; a missing class is an error (its accuracy would be unknown)."""
    assert spec.test_path is not None
    root = Path(spec.test_path).expanduser().resolve()
    present = set(class_folders(root)) if root.is_dir() else set()
    missing = [c for c in class_names if c not in present]
    if missing:
        raise DataError(f"test_path {root}: no class folder(s) {', '.join(missing)} (it needs the same classes "
                        f"as {spec.path})")
    report = scan_folder(root, class_names, decode=True)
    report.enforce(spec.bad_files)
    paths = [f.path for name in class_names for f in report.images[name]]
    labels = np.asarray([label for label, name in enumerate(class_names) for _ in report.images[name]],
                        dtype=np.int64)
    if len(paths) * channels * size[0] * size[1] <= memory_limit_bytes:
        pixels = np.empty((len(paths), channels, *size), dtype=np.uint8)
        if _decode_into(pixels, paths, channels, size):
            raise DataError(f"files under {root} changed while loading; load again")
        return TensorImageSet(torch.from_numpy(pixels), labels)
    decode = partial(decode_image, channels=channels, size=size)
    return StreamingImageSet(paths, labels, decode, channels, size, num_workers)
