"""The pre-flight scan of an ImageFolder: every candidate file is checked before any trial starts.

A bad file found in the middle of a search would fail trials one by one (or, streamed, only at some
epoch), so the scan looks at all of them up front and reports every problem at once: empty files,
files that are not images, truncated or corrupt ones (only a full decode shows these), decompression
bombs, and symlinks that leave the dataset root (never followed, so a dataset cannot read files
outside its own folder).
"""

from __future__ import annotations

import os
import stat
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, TypeVar

from PIL import Image, UnidentifiedImageError

from tunetl.data.spec import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: Pillow formats an image file may be decoded as, whatever its extension; anything else is "not an image".
#: (A camera JPEG opens as MPO through the JPEG plugin.)
PIL_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
#: Images with more pixels are rejected as decompression bombs before any decoding. Pillow's default
#: limit, where it only warns (`DecompressionBombWarning`); Pillow itself refuses twice as many.
MAX_IMAGE_PIXELS = 89_478_485
#: First bytes of each of `PIL_FORMATS`, to tell a damaged image from a file that is no image at all.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
#: Bad files named in one error or warning; the rest are counted.
MAX_LISTED = 20

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class ImageInfo:
    """A file whose header was read: where it is and what the header says."""

    path: str
    mode: str
    height: int
    width: int


@dataclass(frozen=True)
class BadFile:
    """A file the load cannot use, with why (`path` relative to the dataset root)."""

    path: str
    reason: str


@dataclass(frozen=True)
class ScanReport:
    """What a scan found under `root` for the chosen classes, in class order."""

    root: Path
    #: Per class (in the order asked), the files that passed every check made so far, sorted.
    images: dict[str, list[ImageInfo]]
    bad: tuple[BadFile, ...] = ()
    #: Symlinks (to files or folders) whose target is outside the root: not followed, so skipped.
    outside_links: tuple[BadFile, ...] = ()
    #: Classes with no image file at all (before any file was found bad).
    no_image_classes: tuple[str, ...] = ()
    #: Files not considered: hidden ones and those without an image extension (README.txt, .DS_Store).
    ignored_files: int = 0
    #: Whether every file in `images` was fully decoded (truncation and corruption only show then).
    decoded: bool = False
    #: Per class, how many of its files are in `bad`.
    bad_per_class: dict[str, int] = field(default_factory=dict)

    @property
    def skipped(self) -> tuple[str, ...]:
        """Paths (relative to the root) the load leaves out: bad files and links leaving the root."""
        return tuple(sorted([b.path for b in self.bad] + [b.path for b in self.outside_links]))

    def empty_classes(self) -> list[str]:
        """Classes with no usable image left."""
        return [name for name, files in self.images.items() if not files]

    def without(self, failed: dict[str, str]) -> ScanReport:
        """The report with the files in `failed` ({absolute path: reason}) moved from `images` to `bad`."""
        if not failed:
            return self
        images: dict[str, list[ImageInfo]] = {}
        bad = list(self.bad)
        per_class = dict(self.bad_per_class)
        for name, files in self.images.items():
            images[name] = [f for f in files if f.path not in failed]
            dropped = [f for f in files if f.path in failed]
            bad.extend(BadFile(_relative(f.path, self.root), failed[f.path]) for f in dropped)
            per_class[name] = per_class.get(name, 0) + len(dropped)
        return replace(self, images=images, bad=tuple(sorted(bad, key=lambda b: b.path)), bad_per_class=per_class)

    def enforce(self, policy: Literal["fail", "skip"]) -> None:
        """Apply `bad_files`: "fail" raises naming every bad file, "skip" warns and lets the load go on.

        Links leaving the root are never an error (they are not data of this dataset), only reported.
        A class left without images is an error either way.
        """
        if self.outside_links:
            _warn(f"dataset {self.root}: not following {len(self.outside_links)} symlink(s) that leave the "
                  "dataset root (skipped)", self.outside_links)
        lines = [
            f"class folder {self.root / name} contains no images ({', '.join(IMAGE_EXTENSIONS)}); "
            "add images or remove the folder"
            for name in self.no_image_classes
        ]
        if policy == "fail":
            if self.bad:
                lines.append(
                    f"{len(self.bad)} bad file(s) under {self.root}: fix or remove them, or set "
                    f"`bad_files: skip` on this dataset to train without them:\n{_listing(self.bad)}"
                )
            if lines:
                raise DataError("\n".join(lines))
            return
        lines += [
            f"class folder {self.root / name} has no usable image left after skipping its "
            f"{self.bad_per_class.get(name, 0)} bad file(s); fix them or remove the class"
            for name in self.empty_classes()
            if name not in self.no_image_classes
        ]
        if lines:
            if self.bad:
                lines.append(f"bad files under {self.root}:\n{_listing(self.bad)}")
            raise DataError("\n".join(lines))
        if self.bad:
            _warn(f"dataset {self.root}: skipping {len(self.bad)} bad file(s) (bad_files: skip)", self.bad)


def _listing(items: Sequence[BadFile]) -> str:
    lines = [f"  {b.path}: {b.reason}" for b in items[:MAX_LISTED]]
    if len(items) > MAX_LISTED:
        lines.append(f"  and {len(items) - MAX_LISTED} more")
    return "\n".join(lines)


def _warn(headline: str, items: Sequence[BadFile]) -> None:
    import sys

    print(f"[tunetl] warning: {headline}:\n{_listing(items)}", file=sys.stderr, flush=True)


def _relative(path: str | Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def _inside(real: str, root_real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def _leaves_root(entry: os.DirEntry[str], root_real: str) -> str | None:
    """The resolved target of a symlink that points outside the root (None otherwise); never opens it."""
    if not entry.is_symlink():
        return None
    target = os.path.realpath(entry.path)
    return None if _inside(target, root_real) else target


def _outside(path: str, root: Path, target: str) -> BadFile:
    return BadFile(_relative(path, root), f"symlink to {target}, outside the dataset root: not followed")


def class_entries(root: Path) -> tuple[list[str], list[BadFile]]:
    """Sorted class folder names under `root` (hidden ones skipped) and the top-level links leaving it."""
    if not root.exists():
        raise DataError(f"dataset path {root} does not exist")
    if not root.is_dir():
        raise DataError(f"dataset path {root} is not a folder (expected one sub-folder per class)")
    root_real = os.path.realpath(root)
    names: list[str] = []
    outside: list[BadFile] = []
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            target = _leaves_root(entry, root_real)
            if target is not None:
                outside.append(_outside(entry.path, root, target))
            elif entry.is_dir():
                names.append(entry.name)
    if not names:
        raise DataError(f"dataset path {root} has no class sub-folders (expected one per class)")
    return sorted(names), sorted(outside, key=lambda b: b.path)


def _walk(folder: Path, root: Path, root_real: str) -> tuple[list[Path], list[BadFile], int]:
    """(candidate image files sorted, links leaving the root, ignored file count) under one class folder.

    Symlinked folders inside the root are followed once each (a link cycle is not looped).
    """
    found: list[Path] = []
    outside: list[BadFile] = []
    ignored = 0
    seen = {os.path.realpath(folder)}
    stack = [str(folder)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    ignored += entry.is_file(follow_symlinks=False)
                elif (target := _leaves_root(entry, root_real)) is not None:
                    outside.append(_outside(entry.path, root, target))
                elif entry.is_dir():
                    real = os.path.realpath(entry.path)
                    if real not in seen:
                        seen.add(real)
                        stack.append(entry.path)
                elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                    found.append(Path(entry.path))
                else:
                    ignored += 1
    return sorted(found), outside, ignored


def open_image(path: str) -> Image.Image:
    """Open by content, as one of `PIL_FORMATS` only: a file named .png that is a PDF is not an image."""
    Image.init()
    return Image.open(path, formats=PIL_FORMATS)


def _bomb(width: int, height: int) -> str:
    return (f"decompression bomb: {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{MAX_IMAGE_PIXELS:,} (tunetl.data.scan.MAX_IMAGE_PIXELS)")


def _signature(path: str) -> str | None:
    """The format a file's first bytes claim (None when they claim none of `PIL_FORMATS`)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
    except OSError:
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return next((kind for magic, kind in _MAGIC if head.startswith(magic)), None)


def read_header(path: str) -> ImageInfo | str:
    """The header of one file, or why it is not a usable image. Reads the header only (cheap)."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        if st.st_size == 0:
            return "empty file (0 bytes)"
        with open_image(path) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                return _bomb(img.width, img.height)
            return ImageInfo(path, img.mode, img.height, img.width)
    except UnidentifiedImageError:
        kind = _signature(path)
        if kind is not None:
            return f"truncated or corrupt {kind}: its header cannot be read"
        return f"not an image (not readable as {', '.join(PIL_FORMATS)})"
    except Image.DecompressionBombError as exc:
        return f"decompression bomb: {exc}"
    except FileNotFoundError:
        return "cannot read: no such file (a broken symlink?)"
    except OSError as exc:
        if exc.errno is not None:  # the system's error (permissions, I/O), not Pillow's about the bytes
            return f"cannot read: {exc.strerror}"
        return corrupt_reason(exc)
    except Exception as exc:  # Pillow raises many types (SyntaxError, struct.error, ...) on malformed bytes
        return corrupt_reason(exc)


def decode_problem(path: str) -> str | None:
    """Why a full decode of a file whose header was read fails (None when it succeeds)."""
    try:
        with open_image(path) as img:
            img.load()
    except Exception as exc:  # any failure to decode bytes that passed the header check means a bad file
        return corrupt_reason(exc)
    return None


def corrupt_reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    kind = "truncated" if "truncated" in text.lower() else "corrupt"
    return f"{kind}: cannot decode ({text})"


def parallel_map(func: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """`func` over `items` on a few threads (Pillow releases the GIL while reading and decoding)."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(func, items))


def scan_folder(root: str | Path, class_names: Sequence[str], *, decode: bool = True) -> ScanReport:
    """Check every candidate file of the classes `class_names` under `root`; collect all problems.

    Headers are read for every file (empty, not an image, bomb); with `decode` every file that passes is
    also fully decoded (truncated, corrupt). The loader passes `decode=False` when its own load decodes
    every file anyway, and feeds the failures back with `ScanReport.without`.
    """
    root = Path(root)
    root_real = os.path.realpath(root)
    _, outside = class_entries(root)
    candidates: dict[str, list[Path]] = {}
    ignored = 0
    for name in class_names:
        files, links, skipped = _walk(root / name, root, root_real)
        candidates[name] = files
        outside += links
        ignored += skipped
    paths = [str(p) for files in candidates.values() for p in files]
    with warnings.catch_warnings():
        # Bombs are judged by MAX_IMAGE_PIXELS above; Pillow's own warning would only repeat that.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        headers = dict(zip(paths, parallel_map(read_header, paths), strict=True))
    bad = {name: [BadFile(_relative(p, root), h) for p in files if isinstance(h := headers[str(p)], str)]
           for name, files in candidates.items()}
    report = ScanReport(
        root=root,
        images={
            name: [h for p in files if isinstance(h := headers[str(p)], ImageInfo)]
            for name, files in candidates.items()
        },
        bad=tuple(sorted((b for files in bad.values() for b in files), key=lambda b: b.path)),
        outside_links=tuple(sorted(outside, key=lambda b: b.path)),
        no_image_classes=tuple(name for name, files in candidates.items() if not files),
        ignored_files=ignored,
        bad_per_class={name: len(files) for name, files in bad.items()},
    )
    if not decode:
        return report
    good = [f.path for files in report.images.values() for f in files]
    problems = parallel_map(decode_problem, good)
    failed = {p: reason for p, reason in zip(good, problems, strict=True) if reason is not None}
    return replace(report.without(failed), decoded=True)
