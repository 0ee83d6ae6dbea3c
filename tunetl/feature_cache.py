"""Node-level cache of frozen-prefix activations, shared by every trial on a machine.

A frozen prefix (stages with learning rate 0, BatchNorm in eval mode) is a pure function of its weights
and the input, so trials that share source weights, frozen depth, preprocessing and dataset split need
its output computed only once per node. The value is the prefix output for a *whole* split, so every
images-per-label subset (and every seed's subset) indexes into the one computation.

Entries are Arrow IPC files (one fixed-shape-tensor column, uncompressed) written atomically under a
file lock and memory-mapped on read: trials on one node share the pages of the OS page cache instead of
each holding a copy, and the tensor is built over the mapping without copying. Anything unreadable is
treated as a miss and recomputed; a cache directory that cannot be written only costs the sharing.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import tempfile
import uuid
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import torch

from tunetl.data import ImageSet, Preprocess, StreamingImageSet, TensorImageSet
from tunetl.models import StagedModel

log = logging.getLogger(__name__)

#: Environment variable naming the cache directory (node-local; the default is under the temp dir).
CACHE_DIR_ENV = "TUNETL_FEATURE_CACHE"
#: Environment variable with the cache's size cap in GiB (least recently used entries are evicted).
CACHE_MAX_GB_ENV = "TUNETL_FEATURE_CACHE_MAX_GB"
DEFAULT_MAX_BYTES = 20 << 30
#: A whole split's features above this size are not shared (trials fall back to their own cache).
MAX_ENTRY_BYTES = 2 << 30
SUFFIX = ".arrow"
_FORMAT = "tunetl-feature-cache/1"
#: Dtypes an entry can hold (numpy has no bfloat16).
_DTYPES = frozenset({torch.float32, torch.float16, torch.float64})


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_DIR_ENV)
    return Path(env).expanduser() if env else Path(tempfile.gettempdir()) / "tunetl-feature-cache"


def _max_bytes_from_env() -> int:
    raw = os.environ.get(CACHE_MAX_GB_ENV)
    if not raw:
        return DEFAULT_MAX_BYTES
    try:
        return int(float(raw) * (1 << 30))
    except ValueError:
        log.warning("%s=%r is not a number of GiB; using %d GiB", CACHE_MAX_GB_ENV, raw, DEFAULT_MAX_BYTES >> 30)
        return DEFAULT_MAX_BYTES


_fingerprints: weakref.WeakKeyDictionary[ImageSet, str] = weakref.WeakKeyDictionary()


def images_fingerprint(images: ImageSet) -> str:
    """Content hash of a split: its pixels (in memory) or file paths, sizes and mtimes (streamed), plus
    labels. Memoised per object, so a trial pays for it once however many caches it asks."""
    known = _fingerprints.get(images)
    if known is not None:
        return known
    h = hashlib.blake2b(digest_size=16)
    h.update(type(images).__name__.encode())
    h.update(np.ascontiguousarray(images.labels, dtype=np.int64).tobytes())
    if isinstance(images, TensorImageSet):
        pixels = images.images.contiguous()
        h.update(repr((tuple(pixels.shape), str(pixels.dtype))).encode())
        h.update(memoryview(pixels.numpy()).cast("B"))
    elif isinstance(images, StreamingImageSet):
        h.update(repr((images.in_channels, images.image_size)).encode())
        for path in images.paths:
            st = os.stat(path)
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    else:
        raise TypeError(f"cannot fingerprint {type(images).__name__}: not a TensorImageSet or StreamingImageSet")
    digest = h.hexdigest()
    _fingerprints[images] = digest
    return digest


def prefix_fingerprint(model: StagedModel, depth: int) -> str:
    """Hash of what the first `depth` stages compute: the modules' structure and every parameter and
    buffer. Random (seeded) weights of a stage frozen by a zero learning rate hash like any others."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{model.name}:{depth}".encode())
    for i in range(depth):
        stage = model.stages[i]
        h.update(repr(stage).encode())
        tensors = [("p", n, t) for n, t in stage.named_parameters()] + [("b", n, t) for n, t in stage.named_buffers()]
        for kind, name, t in tensors:
            data = t.detach().to("cpu").contiguous()
            h.update(f"{i}.{kind}.{name}:{data.dtype}:{tuple(data.shape)}".encode())
            h.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def prefix_key(
    prefix: str,
    preprocess: Preprocess,
    images: ImageSet,
    *,
    dataset: str,
    split: str,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> str:
    """Cache key of one split's prefix outputs (`prefix`: its `prefix_fingerprint`); equal keys mean
    bit-equal inputs to the same function on the same kind of device."""
    parts = [
        _FORMAT,
        torch.__version__,
        prefix,
        repr((preprocess.size, preprocess.in_channels)),
        repr(preprocess.mean.flatten().tolist()),
        repr(preprocess.std.flatten().tolist()),
        *([repr(preprocess.mode)] if getattr(preprocess, "mode", "bilinear") != "bilinear" else []),
        dataset,
        split,
        images_fingerprint(images),
        device.type,
        str(dtype),
    ]
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=20).hexdigest()


@dataclass(frozen=True)
class CacheResult:
    #: The whole split's prefix outputs on the CPU; memory-mapped (read-only) when it came from a file.
    features: torch.Tensor
    #: True when this call ran `compute` (a miss), False when it read an entry another trial wrote.
    computed: bool
    path: Path | None


class FeatureCache:
    """A directory of prefix-output entries, one Arrow IPC file per key."""

    def __init__(self, directory: str | Path | None = None, max_bytes: int | None = None) -> None:
        self.directory = Path(directory).expanduser() if directory is not None else default_cache_dir()
        self.max_bytes = max_bytes if max_bytes is not None else _max_bytes_from_env()

    def path(self, key: str) -> Path:
        return self.directory / f"{key}{SUFFIX}"

    def get_or_compute(self, key: str, compute: Callable[[], torch.Tensor]) -> CacheResult:
        """The entry for `key`, computed once per node: concurrent callers wait on a file lock and read
        the winner's file. Never raises for cache trouble (only `compute`'s own errors propagate)."""
        path = self.path(key)
        found = self.read(key)
        if found is not None:
            return CacheResult(found, False, path)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            lock = self._lock(key)
        except OSError as err:
            log.warning("feature cache %s is not usable (%s): computing without sharing", self.directory, err)
            return CacheResult(compute(), True, None)
        try:
            found = self.read(key)  # another trial may have written it while this one waited
            if found is not None:
                return CacheResult(found, False, path)
            features = compute()
            written = self._write(key, features)
        finally:
            os.close(lock)  # closing the descriptor releases the lock
        if not written:
            return CacheResult(features, True, None)
        self._evict(keep=path)
        mapped = self.read(key)
        return CacheResult(mapped if mapped is not None else features, True, path)

    def _lock(self, key: str) -> int:
        """An exclusive `flock` on the key's lock file; the kernel drops it if the holder dies."""
        fd = os.open(self.directory / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            os.close(fd)
            raise
        return fd

    def read(self, key: str) -> torch.Tensor | None:
        """The entry memory-mapped as a read-only CPU tensor, or None when missing or unreadable."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            source = pa.memory_map(str(path), "r")
            reader = ipc.open_file(source)
            meta = reader.schema.metadata or {}
            if meta.get(b"format") != _FORMAT.encode() or meta.get(b"key") != key.encode():
                raise ValueError("written for another key or format")
            if reader.num_record_batches != 1:
                raise ValueError(f"{reader.num_record_batches} record batches, expected 1")
            column = reader.get_batch(0).column(0)
            shape = tuple(int(v) for v in meta[b"shape"].decode().split(","))
            if not isinstance(column, pa.FixedShapeTensorArray) or (len(column), *column.type.shape) != shape:
                raise ValueError(f"column does not hold a tensor of shape {shape}")
            array = column.to_numpy_ndarray()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # read-only mapping; trials never write to it
                features = torch.from_numpy(array)
        except (OSError, ValueError, KeyError, pa.ArrowException) as err:
            log.warning("feature cache entry %s is unreadable (%s): recomputing it", path, err)
            return None
        try:
            os.utime(path)  # mtime is the eviction order: this entry was just used
        except OSError:
            pass
        return features

    def _write(self, key: str, features: torch.Tensor) -> bool:
        """Write atomically (a temporary file renamed into place): readers see all of it or nothing."""
        if features.dtype not in _DTYPES or features.dim() < 2:
            return False
        array = features.detach().to("cpu").contiguous().numpy()
        # Built from the raw buffer (no copy): pyarrow's numpy converters import pandas (~0.3 s) first.
        value_type = pa.from_numpy_dtype(array.dtype)
        flat = pa.Array.from_buffers(value_type, array.size, [None, pa.py_buffer(array)])
        storage = pa.FixedSizeListArray.from_arrays(flat, int(np.prod(array.shape[1:])))
        column = pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(value_type, list(array.shape[1:])), storage)
        schema = pa.schema(
            [pa.field("features", column.type, nullable=False)],
            metadata={"format": _FORMAT, "key": key, "shape": ",".join(str(n) for n in array.shape)},
        )
        tmp = self.directory / f".{key}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            with pa.OSFile(str(tmp), "wb") as sink, ipc.new_file(sink, schema) as writer:
                writer.write_batch(pa.record_batch([column], schema=schema))
            os.replace(tmp, self.path(key))
        except (OSError, pa.ArrowException) as err:
            log.warning("cannot write feature cache entry %s (%s): not shared", self.path(key), err)
            tmp.unlink(missing_ok=True)
            return False
        return True

    def entries(self) -> list[Path]:
        return sorted(self.directory.glob(f"*{SUFFIX}")) if self.directory.is_dir() else []

    def _evict(self, keep: Path) -> None:
        """Delete least recently used entries until the directory is under `max_bytes`. Safe while
        other trials map an evicted file: the mapping keeps the data until they drop it."""
        try:
            stats = [(p, p.stat()) for p in self.entries()]
        except OSError:
            return
        total = sum(st.st_size for _, st in stats)
        for p, st in sorted(stats, key=lambda item: item[1].st_mtime_ns):
            if total <= self.max_bytes:
                break
            if p == keep:
                continue
            try:
                p.unlink()
                total -= st.st_size
                # A caller waiting on the old lock may then compute the entry twice; both writes are whole.
                p.with_suffix(".lock").unlink(missing_ok=True)
            except OSError:
                pass
