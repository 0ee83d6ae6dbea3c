"""Bad data in an ImageFolder: real broken files written to tmp_path, caught by the pre-flight scan.

Zero-byte, truncated (PNG and JPEG), not-an-image and decompression-bomb files are named in one error
(`bad_files: fail`) or left out and listed (`bad_files: skip`); hidden folders are ignored; symlinks that
leave the dataset root are never followed, while links inside it work.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pydantic import ValidationError

from tunetl import api
from tunetl.config import ConfigError, load_experiment
from tunetl.data import DataError, DatasetSpec, load_dataset
from tunetl.data import scan as scan_module
from tunetl.data.scan import scan_folder

GOOD_PER_CLASS = 6
#: Every bad file of `_bad_folder`, with a word its reason must contain.
BAD = {
    "cats/zero.png": "empty file",
    "cats/cut.png": "truncated",
    "dogs/cut.jpg": "truncated",
    "dogs/text.jpg": "not an image",
    "dogs/bomb.png": "decompression bomb",
}
OUTSIDE_LINKS = ("dogs/outside.png", "dogs/outside_dir")


def _png(value: int, size: int = 8) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _jpeg(value: int, size: int = 8) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _bomb_png() -> bytes:
    """10,000 x 10,000 1-bit pixels (over Pillow's default limit) that compress to about 12 KB."""
    buf = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buf, "PNG")
    return buf.getvalue()


def _good_class(folder: Path, first: int) -> None:
    folder.mkdir(parents=True)
    for i in range(GOOD_PER_CLASS):
        (folder / f"{i:02d}.png").write_bytes(_png(first + i))


def _bad_folder(tmp_path: Path) -> Path:
    """`root/{cats,dogs}` with 6 good images each, every kind of bad file, and links in and out."""
    root = tmp_path / "pets"
    _good_class(root / "cats", 0)
    _good_class(root / "dogs", 100)
    (root / "cats" / "zero.png").write_bytes(b"")
    png = _png(7, size=32)
    (root / "cats" / "cut.png").write_bytes(png[: len(png) // 2])
    jpeg = _jpeg(50, size=32)
    (root / "dogs" / "cut.jpg").write_bytes(jpeg[: len(jpeg) * 3 // 4])
    (root / "dogs" / "text.jpg").write_text("this is not a JPEG\n")
    (root / "dogs" / "bomb.png").write_bytes(_bomb_png())
    # ignored: a hidden folder holding a broken image, hidden files, a non-image file
    (root / "cats" / ".cache").mkdir()
    (root / "cats" / ".cache" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (root / "dogs" / ".DS_Store").write_bytes(b"\x00\x01")
    (root / "dogs" / "README.txt").write_text("not an image")
    (root / ".git").mkdir()
    # links leaving the root: a broken image and a folder (holding a good image) outside it
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (outside / "dir" / "good.png").write_bytes(_png(999))
    (root / "dogs" / "outside.png").symlink_to(outside / "broken.png")
    (root / "dogs" / "outside_dir").symlink_to(outside / "dir", target_is_directory=True)
    # links inside the root: to a file and to a folder, both followed
    (root / "cats" / "alias.png").symlink_to(root / "dogs" / "00.png")
    (root / "dogs" / "extra").mkdir()
    (root / "dogs" / "extra" / "m.png").write_bytes(_png(500))
    (root / "cats" / "more").symlink_to(root / "dogs" / "extra", target_is_directory=True)
    return root


def _count(data) -> int:  # type: ignore[no-untyped-def]
    return len(data.train) + len(data.val)


def test_fail_mode_names_every_bad_file_with_its_reason(tmp_path: Path) -> None:
    root = _bad_folder(tmp_path)
    with pytest.raises(DataError) as err:
        load_dataset(DatasetSpec(path=str(root)))
    message = str(err.value)
    assert f"{len(BAD)} bad file(s) under {root}" in message
    assert "bad_files: skip" in message
    listed = {line.strip().split(": ", 1)[0]: line for line in message.splitlines() if line.startswith("  ")}
    assert set(listed) == set(BAD)
    for path, word in BAD.items():
        assert word in listed[path], listed[path]
    assert ".cache" not in message and "outside" not in message


@pytest.mark.parametrize("memory_limit_bytes", [1_500_000_000, 0], ids=["in_memory", "streamed"])
def test_skip_mode_loads_only_good_images_and_lists_the_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture, memory_limit_bytes: int
) -> None:
    root = _bad_folder(tmp_path)
    spec = DatasetSpec(path=str(root), bad_files="skip")
    data = load_dataset(spec, memory_limit_bytes=memory_limit_bytes)
    assert data.skipped_files == tuple(sorted([*BAD, *OUTSIDE_LINKS]))
    # cats: 6 good + alias.png + more/m.png (links inside the root); dogs: 6 good + extra/m.png, none from outside
    labels = np.concatenate([data.train.labels, data.val.labels])
    assert np.bincount(labels).tolist() == [GOOD_PER_CLASS + 2, GOOD_PER_CLASS + 1]
    assert data.in_channels == 1 and data.image_size == (8, 8)
    xs = [x for x, _ in data.train.batches(batch_size=4)]
    assert sum(len(x) for x in xs) == len(data.train)
    err = capsys.readouterr().err
    assert f"skipping {len(BAD)} bad file(s)" in err
    assert all(path in err for path in [*BAD, *OUTSIDE_LINKS])


def test_links_leaving_the_root_are_never_followed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """With no bad file but links out, fail mode loads: the broken image outside is never opened."""
    root = tmp_path / "d"
    _good_class(root / "a", 0)
    _good_class(root / "b", 10)
    outside = tmp_path / "elsewhere"
    (outside / "imgs").mkdir(parents=True)
    (outside / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (outside / "imgs" / "good.png").write_bytes(_png(3))
    (root / "a" / "link.png").symlink_to(outside / "broken.png")
    (root / "b" / "imgs").symlink_to(outside / "imgs", target_is_directory=True)
    (root / "c").symlink_to(outside / "imgs", target_is_directory=True)  # a "class" outside the root
    data = load_dataset(DatasetSpec(path=str(root)))
    assert data.class_names == ["a", "b"]
    assert _count(data) == 2 * GOOD_PER_CLASS
    assert data.skipped_files == ("a/link.png", "b/imgs", "c")
    err = capsys.readouterr().err
    assert "not following 3 symlink(s)" in err and str(outside / "broken.png") in err


def test_scan_catches_truncated_png_and_jpeg_by_a_full_decode(tmp_path: Path) -> None:
    root = tmp_path / "t"
    _good_class(root / "a", 0)
    png, jpeg = _png(1, size=64), _jpeg(9, size=64)
    (root / "a" / "half.png").write_bytes(png[: len(png) // 2])
    (root / "a" / "half.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    headers_only = scan_folder(root, ["a"], decode=False)
    assert headers_only.bad == ()  # the headers of both are intact: only decoding shows the damage
    report = scan_folder(root, ["a"])
    assert report.decoded
    assert {b.path: b.reason.split(":")[0] for b in report.bad} == {"a/half.png": "truncated",
                                                                   "a/half.jpg": "truncated"}
    assert [Path(f.path).name for f in report.images["a"]] == [f"{i:02d}.png" for i in range(GOOD_PER_CLASS)]
    assert report.ignored_files == 0


def test_scan_counts_ignored_files_and_skips_hidden_folders(tmp_path: Path) -> None:
    root = _bad_folder(tmp_path)
    report = scan_folder(root, ["cats", "dogs"])
    assert report.ignored_files == 2  # dogs/.DS_Store, dogs/README.txt; cats/.cache is never entered
    assert {b.path for b in report.bad} == set(BAD)
    assert [b.path for b in report.outside_links] == list(OUTSIDE_LINKS)


def test_the_pixel_limit_is_a_module_constant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "p"
    _good_class(root / "a", 0)
    _good_class(root / "b", 10)
    (root / "b" / "big.png").write_bytes(_png(5, size=16))
    monkeypatch.setattr(scan_module, "MAX_IMAGE_PIXELS", 100)  # 8x8 passes, 16x16 is a "bomb"
    with pytest.raises(DataError, match=r"b/big\.png: decompression bomb: 16x16 = 256 pixels"):
        load_dataset(DatasetSpec(path=str(root)))


def test_a_skipped_truncated_file_does_not_shape_the_others(tmp_path: Path) -> None:
    """Truncated 16x16 files would move the median size: skipped, they must not, in memory or streamed."""
    root = tmp_path / "m"
    for name in "ab":
        (root / name).mkdir(parents=True)
        for i in range(2):
            (root / name / f"{i}.png").write_bytes(_png(i))
    big = _png(3, size=64)
    for i in range(5):
        (root / "b" / f"cut{i}.png").write_bytes(big[: len(big) // 2])
    spec = DatasetSpec(path=str(root), bad_files="skip", val_fraction=0.5)
    in_memory = load_dataset(spec)
    streamed = load_dataset(spec, memory_limit_bytes=0)
    assert in_memory.image_size == streamed.image_size == (8, 8)
    assert len(in_memory.skipped_files) == 5
    x_mem = np.concatenate([x.numpy() for x, _ in in_memory.val.batches()])
    x_str = np.concatenate([x.numpy() for x, _ in streamed.val.batches()])
    assert np.array_equal(x_mem, x_str)


def test_an_empty_class_is_an_error_in_both_modes(tmp_path: Path) -> None:
    root = tmp_path / "e"
    _good_class(root / "a", 0)
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("no images here")
    for mode in ("fail", "skip"):
        with pytest.raises(DataError, match=r"class folder .*empty contains no images"):
            load_dataset(DatasetSpec(path=str(root), bad_files=mode))


def test_a_class_left_empty_by_skipping_is_an_error_naming_it(tmp_path: Path) -> None:
    root = tmp_path / "s"
    _good_class(root / "a", 0)
    (root / "b").mkdir()
    (root / "b" / "zero.png").write_bytes(b"")
    (root / "b" / "text.png").write_text("nope")
    with pytest.raises(DataError, match=r"class folder .*/b has no usable image left after skipping its 2 bad"):
        load_dataset(DatasetSpec(path=str(root), bad_files="skip"))


def test_a_long_listing_is_capped(tmp_path: Path) -> None:
    root = tmp_path / "many"
    _good_class(root / "a", 0)
    _good_class(root / "b", 10)
    for i in range(25):
        (root / "b" / f"z{i:02d}.png").write_bytes(b"")
    with pytest.raises(DataError) as err:
        load_dataset(DatasetSpec(path=str(root)))
    message = str(err.value)
    assert "25 bad file(s)" in message and "  and 5 more" in message
    assert message.count("empty file (0 bytes)") == scan_module.MAX_LISTED


def test_bad_files_is_validated_and_settable_with_set() -> None:
    with pytest.raises(ValidationError, match="bad_files"):
        DatasetSpec(path="/data", bad_files="ignore")  # type: ignore[arg-type]
    exp = load_experiment(_experiment("/data/x"), ["dataset.bad_files=skip"])
    assert exp.dataset is not None and exp.dataset.bad_files == "skip"
    assert DatasetSpec(builtin="digits", bad_files="skip").bad_files == "skip"


def _experiment(path: str, **dataset: str) -> dict:
    return {
        "name": "bad_data",
        "dataset": {"path": path, "val_fraction": 0.5, **dataset},
        "backbone": "smallcnn",
        "search_space": {"transfer_depth": 0, "frozen_depth": 0, "images_per_label": 2},
        "training": {"epochs": 1},
        "seeds": [0],
    }


def test_plan_fails_naming_the_bad_file_and_passes_when_skipping(tmp_path: Path) -> None:
    root = _bad_folder(tmp_path)
    with pytest.raises(ConfigError, match=r"dataset: .*5 bad file\(s\)") as err:
        api.plan(_experiment(str(root)))
    assert "cats/zero.png: empty file" in str(err.value)
    plan = api.plan(_experiment(str(root), bad_files="skip"))
    (_, task), = plan.tasks
    assert task.skipped_files == tuple(sorted([*BAD, *OUTSIDE_LINKS]))


@pytest.mark.slow
def test_cli_run_exits_2_naming_the_bad_file_before_any_trial(tmp_path: Path) -> None:
    root = _bad_folder(tmp_path)
    exp_file = tmp_path / "exp.yaml"
    exp_file.write_text(yaml.safe_dump(_experiment(str(root))))
    tunetl = Path(sys.executable).with_name("tunetl")
    proc = subprocess.run(
        [str(tunetl), "run", str(exp_file), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--storage", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "tunetl: error: dataset:" in proc.stderr and "dogs/bomb.png: decompression bomb" in proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_search_that_skips_bad_files_records_them_on_its_parent_run(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    root = _bad_folder(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = _experiment(str(root), bad_files="skip")
    exp["scheduler"] = {"type": "none"}
    try:
        summary = api.run(exp, tracking_uri=uri, storage=tmp_path / "runs", num_cpus=1)
    finally:
        import ray

        ray.shutdown()
    assert summary.num_trials == 1 and summary.num_failed == 0
    parent = MlflowClient(uri).get_run(summary.parent_run_id)
    skipped = sorted([*BAD, *OUTSIDE_LINKS])
    assert parent.data.params["skipped_files"] == str(len(skipped))
    assert all(name in parent.data.tags["tunetl.skipped_files"] for name in skipped)
