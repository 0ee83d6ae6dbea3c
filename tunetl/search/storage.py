"""Where searches keep their state, checkpoints and source cache: a local or NFS folder, or any URI pyarrow
understands (`s3://bucket/path`, `gs://bucket/path`, `file:///path`).

Ray Tune writes checkpoints through the same pyarrow filesystem (`RunConfig.storage_filesystem`), so a
trial restarted on another node finds them. tunetl's own files (the search's state file, the source
cache) go through it too. Credentials and endpoints come from the filesystem's usual environment
(`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, `GOOGLE_APPLICATION_CREDENTIALS`, ...) or from URI query options
(`s3://bucket/runs?endpoint_override=http://minio:9000`), never from tunetl's config or logs.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any


class StorageError(ValueError):
    """A storage path or URI that cannot be used; the message names it and says what to do."""


class Storage:
    """One search storage root. Pickles (by its text) into Ray tasks that check it from other nodes."""

    def __init__(self, text: str | Path) -> None:
        import pyarrow.fs as pafs

        self.text = str(text)
        if "://" in self.text:
            try:
                fs, root = pafs.FileSystem.from_uri(self.text)
            except (pafs.ArrowInvalid, OSError, ValueError) as err:  # type: ignore[attr-defined]
                raise StorageError(f"--storage {self.text}: {err}") from None
        else:
            fs, root = pafs.LocalFileSystem(), str(Path(self.text).expanduser().resolve())
        self.fs: Any = fs
        self.root = root.rstrip("/") or "/"
        self.is_local = isinstance(fs, pafs.LocalFileSystem)
        scheme = self.text.split("://", 1)[0] if "://" in self.text and not self.is_local else ""
        self.uri = f"{scheme}://{self.root}" if scheme else self.root

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (Storage, (self.text,))

    def __repr__(self) -> str:
        return f"Storage({self.uri!r})"

    @property
    def local_path(self) -> Path:
        """The root as a local folder (only for local storage)."""
        if not self.is_local:
            raise StorageError(f"{self.uri} is not a local folder")
        return Path(self.root)

    def path(self, *parts: str) -> str:
        """A path inside the storage, in the filesystem's own terms (what pyarrow and Ray take)."""
        return "/".join([self.root.rstrip("/"), *parts]) if parts else self.root

    def display(self, *parts: str) -> str:
        """A path inside the storage as users write it (a URI for object stores)."""
        return "/".join([self.uri.rstrip("/"), *parts]) if parts else self.uri

    def exists(self, *parts: str) -> bool:
        import pyarrow.fs as pafs

        return bool(self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound)

    def read_text(self, *parts: str) -> str:
        with self.fs.open_input_stream(self.path(*parts)) as f:
            return bytes(f.read()).decode()

    def write_text(self, text: str, *parts: str) -> None:
        """Write a small file whole: atomically on a local disk (tmp + rename); objects are atomic anyway."""
        target = self.path(*parts)
        self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        if self.is_local:
            tmp = f"{target}.{uuid.uuid4().hex}.tmp"
            Path(tmp).write_text(text)
            os.replace(tmp, target)
            return
        with self.fs.open_output_stream(target) as f:
            f.write(text.encode())

    def subfolders_with(self, prefix: str, filename: str) -> list[tuple[str, float]]:
        """(name, modification time of `filename` in it) of the folders `prefix*` that hold `filename`."""
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self.root, allow_not_found=True, recursive=False)
        names = [i.base_name for i in self.fs.get_file_info(selector)
                 if i.type == pafs.FileType.Directory and i.base_name.startswith(prefix)]
        out = []
        for info in self.fs.get_file_info([self.path(n, filename) for n in names]):
            if info.type == pafs.FileType.File:
                mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
                out.append((info.path.rstrip("/").rsplit("/", 2)[-2], mtime))
        return sorted(out, key=lambda t: (t[1], t[0]))

    def probe(self) -> str | None:
        """None when this process can write the storage (creating the root if needed), else why not."""
        name = f".tunetl-probe-{uuid.uuid4().hex}"
        try:
            self.fs.create_dir(self.root, recursive=True)
            with self.fs.open_output_stream(self.path(name)) as f:
                f.write(b"ok")
            self.fs.delete_file(self.path(name))
        except (OSError, ValueError) as err:
            return f"{type(err).__name__}: {getattr(err, 'strerror', None) or err}"
        return None

    def lock_file(self, *parts: str) -> Path:
        """A local file to lock for `parts` (object stores have no locks: a per-machine file stands in)."""
        if self.is_local:
            return Path(self.path(*parts))
        digest = hashlib.sha1(self.display(*parts).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / "tunetl-locks" / f"{digest}.lock"

    def cache_dir(self) -> Path:
        """The local folder the source cache is built in: inside local storage, else a local mirror."""
        if self.is_local:
            return Path(self.path("cache"))
        digest = hashlib.sha1(self.uri.encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / "tunetl-cache" / digest

    def pull(self, folder: str, local: Path) -> None:
        """Copy `folder` of a remote storage into `local` (missing files only); nothing for local storage."""
        self._copy(folder, local, down=True)

    def push(self, local: Path, folder: str) -> None:
        """Copy the files of `local` into `folder` of a remote storage (missing files only)."""
        self._copy(folder, local, down=False)

    def _copy(self, folder: str, local: Path, *, down: bool) -> None:
        import pyarrow.fs as pafs

        if self.is_local:
            return
        here = pafs.LocalFileSystem()
        src_fs, src, dst_fs, dst = (
            (self.fs, self.path(folder), here, str(local)) if down else (here, str(local), self.fs, self.path(folder))
        )
        selector = pafs.FileSelector(src, allow_not_found=True, recursive=True)
        for info in src_fs.get_file_info(selector):
            if info.type != pafs.FileType.File:
                continue
            target = f"{dst}/{info.path[len(src):].lstrip('/')}"
            if dst_fs.get_file_info(target).type == pafs.FileType.File:
                continue
            dst_fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            pafs.copy_files(info.path, target, source_filesystem=src_fs, destination_filesystem=dst_fs)
