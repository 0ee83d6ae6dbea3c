"""ImageFolder datasets: one sub-folder per class, decoded with Pillow to one common shape.

The channel count and image size are decided once from the file headers (cheap: Pillow reads only the
header on open), so that every batch has one shape whether images are held in memory or streamed.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from tunetl.data.imageset import ImageSet, StreamingImageSet, TaskData, TensorImageSet
from tunetl.data.spec import MEMORY_LIMIT_BYTES, DataError, DatasetSpec
from tunetl.data.subsets import resolve_classes, stratified_split

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: Pillow modes treated as grayscale; a folder is 1-channel only when every image is one of these.
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N"})


def _unreadable(path: str | Path, exc: Exception) -> DataError:
    return DataError(f"cannot read image {path}: {exc}; fix or remove the file")


def class_folders(root: Path) -> list[str]:
    """Sorted names of the class sub-folders of `root`, hidden ones skipped."""
    if not root.exists():
        raise DataError(f"dataset path {root} does not exist")
    if not root.is_dir():
        raise DataError(f"dataset path {root} is not a folder (expected one sub-folder per class)")
    names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise DataError(f"dataset path {root} has no class sub-folders (expected one per class)")
    return names


def image_files(folder: Path) -> list[Path]:
    """Image files under a class folder (recursively), sorted; hidden files and folders skipped."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(
            Path(dirpath, f)
            for f in filenames
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
        )
    return sorted(found)


def _header(path: Path) -> tuple[str, int, int]:
    """(mode, height, width) from the file header."""
    try:
        with Image.open(path) as img:
            return img.mode, img.height, img.width
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise _unreadable(path, exc) from exc


def _to_gray(img: Image.Image) -> Image.Image:
    """8-bit grayscale; 16/32-bit integer images are scaled from the 16-bit range, not clipped."""
    if img.mode.startswith("I"):
        arr = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.rint(arr / 257.0).clip(0, 255).astype(np.uint8), mode="L")
    return img.convert("L")


def decode_image(path: str, channels: int, size: tuple[int, int]) -> np.ndarray:
    """Decode one file to uint8 (channels, H, W), converted and resized (bilinear) to `size`."""
    try:
        with Image.open(path) as img:
            img.load()
            if channels == 1 or img.mode in GRAY_MODES:
                img = _to_gray(img)
            if channels == 3:
                img = img.convert("RGB")
            height, width = size
            if (img.height, img.width) != (height, width):
                img = img.resize((width, height), Image.Resampling.BILINEAR)
            arr = np.array(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise _unreadable(path, exc) from exc
    return arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))


def _common_size(sizes: np.ndarray, hint: int | tuple[int, int] | None) -> tuple[int, int]:
    if hint is not None:
        height, width = (hint, hint) if isinstance(hint, int) else hint
        if height < 1 or width < 1:
            raise DataError(f"image_size must be positive, got {hint!r}")
        return int(height), int(width)
    median = np.median(sizes, axis=0)
    return int(round(median[0])), int(round(median[1]))


def _decode_all(paths: list[str], channels: int, size: tuple[int, int]) -> np.ndarray:
    """Decode every file into one array, on a few threads (Pillow releases the GIL while decoding)."""
    out = np.empty((len(paths), channels, *size), dtype=np.uint8)
    decode = partial(decode_image, channels=channels, size=size)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for i, arr in enumerate(pool.map(decode, paths)):
            out[i] = arr
    return out


def load_folder(
    spec: DatasetSpec,
    *,
    image_size: int | tuple[int, int] | None = None,
    memory_limit_bytes: int = MEMORY_LIMIT_BYTES,
    num_workers: int = 0,
) -> TaskData:
    """Load an ImageFolder: in memory when its decoded pixels fit `memory_limit_bytes`, else streamed."""
    assert spec.path is not None
    root = Path(spec.path).expanduser()
    all_names = class_folders(root)
    chosen = resolve_classes(spec.classes, all_names, str(root))
    class_names = [all_names[c] for c in chosen]

    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(class_names):
        files = image_files(root / name)
        if not files:
            raise DataError(
                f"class folder {root / name} contains no images ({', '.join(IMAGE_EXTENSIONS)}); "
                "add images or remove the folder"
            )
        paths.extend(str(f) for f in files)
        labels.extend([label] * len(files))
    label_arr = np.asarray(labels, dtype=np.int64)

    headers = [_header(Path(p)) for p in paths]
    channels = 1 if all(mode in GRAY_MODES for mode, _, _ in headers) else 3
    size = _common_size(np.asarray([(h, w) for _, h, w in headers]), image_size)
    train_idx, val_idx = stratified_split(label_arr, spec.val_fraction, spec.split_seed, chosen, class_names)

    train: ImageSet
    val: ImageSet
    if len(paths) * channels * size[0] * size[1] <= memory_limit_bytes:
        images = torch.from_numpy(_decode_all(paths, channels, size))
        train = TensorImageSet(images[torch.from_numpy(train_idx)], label_arr[train_idx])
        val = TensorImageSet(images[torch.from_numpy(val_idx)], label_arr[val_idx])
    else:
        decode = partial(decode_image, channels=channels, size=size)

        def stream(idx: np.ndarray) -> StreamingImageSet:
            return StreamingImageSet(
                [paths[i] for i in idx], label_arr[idx], decode, channels, size, num_workers
            )

        train, val = stream(train_idx), stream(val_idx)
    return TaskData(
        name=spec.display_name(),
        class_names=class_names,
        train=train,
        val=val,
        in_channels=channels,
        image_size=size,
    )
