"""Checks a search passes before its first trial, and Ray's start: storage, the cluster address, resources,
and data the trials read from disk; each failure a `SearchError` that says what to do next.

Checks that need Ray run after `init_ray` and ask every node (`_fails_on_nodes`); the rest run before it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tunetl.config import ExperimentConfig
from tunetl.data import TaskData
from tunetl.search.storage import Storage, StorageError


class SearchError(RuntimeError):
    """A search that cannot start or resume; the message says what to do."""


def default_storage() -> Path:
    return (Path.cwd() / "tunetl_runs").resolve()


def open_storage(text: str | Path | None) -> Storage:
    """The search storage from `--storage` (default ./tunetl_runs); a bad URI is a SearchError naming it."""
    try:
        return Storage(text if text else default_storage())
    except StorageError as err:
        raise SearchError(str(err)) from None


def check_local_storage(storage: Storage) -> None:
    """The storage must be a folder this machine can write, before Ray starts (nodes are checked later)."""
    if storage.is_local and storage.local_path.exists() and not storage.local_path.is_dir():
        raise SearchError(f"--storage {storage.display()}: is a file, not a folder; give a folder (created if "
                          "missing), e.g. --storage ./tunetl_runs")
    why = storage.probe()
    if why is not None:
        raise SearchError(f"--storage {storage.display()}: cannot write there ({why}); give a folder you can "
                          "write, e.g. --storage ./tunetl_runs")


def check_address(address: str | None, timeout_s: float = 5.0) -> None:
    """A `HOST:PORT` Ray address must answer within seconds: Ray alone waits minutes without a word."""
    import socket

    address = address or os.environ.get("RAY_ADDRESS") or None
    if not address or address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise SearchError(f"--address {address}: expected HOST:PORT (the head node's GCS port, e.g. 10.0.0.1:6379) "
                          "or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return
    except OSError as err:
        why = err.strerror or type(err).__name__
    raise SearchError(f"--address {address}: no Ray cluster answers there ({why}); start one with "
                      f"`ray start --head --port {port}` or leave out --address to run locally")


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Join `address` (or RAY_ADDRESS) when given; otherwise start Ray on this machine."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Each trial checkpoints every epoch by design (resume loses at most one epoch); Tune's warning
    # about the resulting state snapshots is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")


def check_resources(experiment: ExperimentConfig) -> None:
    """Fail before any trial when no node of the cluster can ever run one (it would stay PENDING)."""
    import ray

    res = experiment.resources
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    fits = [n for n in nodes if n.get("CPU", 0) >= res.cpu and n.get("GPU", 0) >= res.gpu]
    if fits:
        return
    gpus = max((n.get("GPU", 0) for n in nodes), default=0)
    cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    if res.gpu > gpus:
        raise SearchError(
            f"resources.gpu: each trial asks for {res.gpu:g} GPU(s) but no node of the Ray cluster has more "
            f"than {gpus:g}; set resources.gpu: 0 (--set resources.gpu=0) or join a GPU cluster with --address"
        )
    raise SearchError(
        f"resources.cpu: each trial asks for {res.cpu:g} CPU(s) but no node of the Ray cluster has more than "
        f"{cpus:g}; lower resources.cpu (--set resources.cpu=1)"
    )


def _can_write(storage: Storage) -> str | None:
    """None when this process can write `storage`, else why not (run on each node)."""
    return storage.probe()


def _unreadable(paths: list[str]) -> str | None:
    """None when this process can read every file in `paths`, else the first that it cannot and why."""
    for path in paths:
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as err:
            return f"{path}: {err.strerror or err}"
    return None


def _fails_on_nodes(check: Any, *args: Any) -> dict[str, str]:
    """Run `check(*args)` once on every alive node that runs trials; {node id: why} where it failed.

    A single-node cluster is this machine, which the caller has already checked.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    if len(nodes) < 2:
        return {}
    probe = ray.remote(num_cpus=0)(check)
    refs = {
        n["NodeID"]: probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(*args)
        for n in nodes
    }
    return {node: why for node, why in zip(refs, ray.get(list(refs.values()), timeout=120)) if why}


def _per_node(failed: dict[str, str]) -> str:
    return "; ".join(f"node {node[:12]}: {why}" for node, why in failed.items())


def check_storage(storage: Storage) -> None:
    """Every node must be able to write the storage (checkpoints, source cache) before trials start."""
    local = storage.probe()
    if local is not None:
        raise SearchError(f"--storage {storage.display()}: cannot write there from this machine ({local})")
    failed = _fails_on_nodes(_can_write, storage)
    if failed:
        hint = ("give the nodes credentials for it (e.g. AWS_* variables in their environment)" if not storage.is_local
                else "give a path all nodes mount (e.g. NFS at the same path) or an s3:// or gs:// URI")
        raise SearchError(f"--storage {storage.display()}: not writable from every Ray node ({_per_node(failed)}); "
                          f"{hint}")


def streamed_samples(task: TaskData, per_split: int = 3) -> list[str]:
    """A few files (first, middle, last) of each split that trials read from disk; [] for data in memory,
    which reaches the trials through Ray's object store."""
    out: list[str] = []
    for split in (task.train, task.val):
        paths = getattr(split, "paths", None) or []
        if paths:
            picks = sorted({0, len(paths) // 2, len(paths) - 1})[:per_split]
            out += [paths[i] for i in picks]
    return out


def check_data(tasks: list[TaskData]) -> None:
    """A folder too large for memory is read by the trials from its path: every node must see it there."""
    for task in tasks:
        samples = streamed_samples(task)
        if not samples:
            continue
        local = _unreadable(samples)
        if local is not None:
            raise SearchError(f"dataset {task.name}: cannot read {local}; was the folder moved while loading?")
        failed = _fails_on_nodes(_unreadable, samples)
        if failed:
            raise SearchError(
                f"dataset {task.name}: too large for memory, so trials read its files where they run, and not "
                f"every Ray node can ({_per_node(failed)}); mount the folder at the same path on every node "
                "(e.g. NFS) or copy it there"
            )
