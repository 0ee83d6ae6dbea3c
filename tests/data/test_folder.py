"""ImageFolder datasets made with Pillow in tmp_path: formats, channels, sizes, errors, streaming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tunetl.data import DataError, DatasetSpec, StreamingImageSet, TensorImageSet, load_dataset


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def _gray(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w), dtype=np.uint8)


def _rgb(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _gray_folder(root: Path, per_class: int = 4) -> Path:
    """Classes a, b, c; sizes vary (median 12x10)."""
    rng = np.random.default_rng(0)
    sizes = [(12, 10), (12, 10), (12, 10), (8, 8), (16, 14)]
    for ci, name in enumerate("abc"):
        for i in range(per_class):
            h, w = sizes[(ci + i) % len(sizes)]
            _save(root / name / f"{i:02d}.png", _gray(rng, h, w))
    return root


def _all(images) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*images.batches(batch_size=5), strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_grayscale_folder_of_mixed_sizes(tmp_path: Path) -> None:
    root = _gray_folder(tmp_path / "shapes")
    data = load_dataset(DatasetSpec(path=str(root), val_fraction=0.25))
    assert data.name == "shapes"
    assert data.class_names == ["a", "b", "c"]
    assert data.in_channels == 1 and data.image_size == (12, 10)
    assert isinstance(data.train, TensorImageSet)
    assert np.bincount(data.val.labels).tolist() == [1, 1, 1]
    assert np.bincount(data.train.labels).tolist() == [3, 3, 3]
    x, y = _all(data.train)
    assert x.shape == (9, 1, 12, 10) and x.dtype == torch.uint8 and y.dtype == torch.int64


def test_pixels_of_native_size_images_are_kept_exactly(tmp_path: Path) -> None:
    pixels = np.arange(120, dtype=np.uint8).reshape(12, 10)
    for name in "ab":
        for i in range(2):
            _save(tmp_path / "d" / name / f"{i}.png", pixels + i)
    data = load_dataset(DatasetSpec(path=str(tmp_path / "d"), val_fraction=0.5))
    x, _ = _all(data.train)
    assert {tuple(img[0].flatten().tolist()) for img in x} <= {
        tuple(pixels.flatten().tolist()),
        tuple((pixels + 1).flatten().tolist()),
    }


def test_rgb_and_grayscale_mix_becomes_rgb_in_every_format(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    root = tmp_path / "mix"
    for ext in ("png", "jpg", "jpeg", "bmp", "gif", "tif", "tiff", "webp"):
        _save(root / "color" / f"img.{ext}", _rgb(rng, 16, 16))
        _save(root / "color" / f"small.{ext.upper()}", _rgb(rng, 8, 12))
    gray = _gray(rng, 16, 16)
    _save(root / "gray" / "0.png", gray)
    _save(root / "gray" / "1.png", gray)
    data = load_dataset(DatasetSpec(path=str(root), val_fraction=0.5))
    assert data.in_channels == 3 and data.image_size == (16, 16)
    assert len(data.train) + len(data.val) == 18
    x, y = _all(data.val)
    grays = x[y == data.class_names.index("gray")]
    assert grays.shape[1] == 3
    assert torch.equal(grays[0, 0], torch.from_numpy(gray)) and torch.equal(grays[0, 0], grays[0, 2])


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    deep = np.full((6, 6), 65535, dtype=np.uint16)
    for name in "ab":
        for i in range(2):
            Path(tmp_path / "d" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(deep // (i + 1)).save(tmp_path / "d" / name / f"{i}.png")
    data = load_dataset(DatasetSpec(path=str(tmp_path / "d"), val_fraction=0.5))
    assert data.in_channels == 1
    x = torch.cat([_all(data.train)[0], _all(data.val)[0]])
    assert sorted({int(v) for v in x.unique()}) == [127, 255]  # 32767 / 257 = 127.498 -> 127


def test_image_size_hint_overrides_the_median(tmp_path: Path) -> None:
    root = _gray_folder(tmp_path / "s")
    data = load_dataset(DatasetSpec(path=str(root)), image_size=(6, 7))
    assert data.image_size == (6, 7)
    assert _all(data.val)[0].shape[1:] == (1, 6, 7)


def test_class_subset_by_folder_name(tmp_path: Path) -> None:
    root = _gray_folder(tmp_path / "s")
    data = load_dataset(DatasetSpec(path=str(root), classes=["c", "a"], val_fraction=0.25))
    assert data.name == "s[c,a]"
    assert data.class_names == ["c", "a"]
    assert len(data.train) + len(data.val) == 8
    assert set(np.unique(data.train.labels)) == {0, 1}


def test_hidden_files_and_folders_are_ignored(tmp_path: Path) -> None:
    root = _gray_folder(tmp_path / "s")
    (root / ".cache").mkdir()
    _save(root / ".cache" / "x.png", np.zeros((4, 4), np.uint8))
    (root / "a" / "._01.png").write_bytes(b"AppleDouble junk")
    (root / "a" / ".DS_Store").write_bytes(b"\x00\x01")
    (root / "b" / ".thumbs").mkdir()
    (root / "b" / ".thumbs" / "t.png").write_bytes(b"not an image")
    (root / "c" / "notes.txt").write_text("not an image")
    data = load_dataset(DatasetSpec(path=str(root)))
    assert data.class_names == ["a", "b", "c"]
    assert len(data.train) + len(data.val) == 12


def test_corrupt_image_error_names_the_file(tmp_path: Path) -> None:
    root = _gray_folder(tmp_path / "s")
    bad = root / "b" / "broken.png"
    bad.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(DataError, match=r"b/broken\.png: not an image"):
        load_dataset(DatasetSpec(path=str(root)))


def test_truncated_image_error_names_the_file(tmp_path: Path) -> None:
    root = _gray_folder(tmp_path / "s")
    good = (root / "a" / "00.png").read_bytes()
    (root / "a" / "cut.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"cut\.png"):
        load_dataset(DatasetSpec(path=str(root)))


def test_empty_class_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    root = _gray_folder(tmp_path / "s")
    (root / "empty").mkdir()
    with pytest.raises(DataError, match=r"class folder .*empty contains no images"):
        load_dataset(DatasetSpec(path=str(root)))


def test_missing_folder_and_folder_without_classes(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(DatasetSpec(path=str(tmp_path / "nope")))
    with pytest.raises(DataError, match="no class sub-folders"):
        load_dataset(DatasetSpec(path=str(tmp_path)))


def _batches(images, generator_seed: int | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(generator_seed) if generator_seed is not None else None
    return list(images.batches(None, 4, shuffle=gen is not None, generator=gen))


@pytest.mark.parametrize("num_workers", [0, 1])
def test_streaming_yields_the_same_batches_as_in_memory(tmp_path: Path, num_workers: int) -> None:
    root = _gray_folder(tmp_path / "s", per_class=5)
    spec = DatasetSpec(path=str(root))
    memory = load_dataset(spec)
    stream = load_dataset(spec, memory_limit_bytes=0, num_workers=num_workers)
    assert isinstance(stream.train, StreamingImageSet) and isinstance(stream.val, StreamingImageSet)
    assert np.array_equal(memory.train.labels, stream.train.labels)
    for seed in (None, 7):
        for part in ("train", "val"):
            a = _batches(getattr(memory, part), seed)
            b = _batches(getattr(stream, part), seed)
            assert len(a) == len(b)
            for (xa, ya), (xb, yb) in zip(a, b, strict=True):
                assert xb.dtype == torch.uint8 and yb.dtype == torch.int64
                assert torch.equal(xa, xb) and torch.equal(ya, yb)
    idx = np.array([4, 0, 2])
    assert torch.equal(next(memory.train.batches(idx, 8))[0], next(stream.train.batches(idx, 8))[0])
