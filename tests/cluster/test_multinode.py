"""A real two-node Ray cluster on one machine (ray.cluster_utils.Cluster, one CPU per node) and a real
MLflow server: a search's trials land on both nodes, every child run ends FINISHED in the server, and
checkpoints reach the shared storage path."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tunetl import api
from tunetl.search.preflight import SearchError
from tunetl.tracking import load_trials

pytestmark = pytest.mark.slow

QUICK = str(Path(__file__).resolve().parents[2] / "experiments" / "quickstart.yaml")


@pytest.fixture(scope="module")
def two_nodes():  # type: ignore[no-untyped-def]
    import ray
    from ray.cluster_utils import Cluster

    from tunetl.search.faults import ENV

    # Trials without MLflow work in the worker take well under a second: slowed to 0.5 s per epoch (the
    # nodes' workers inherit `TUNETL_FAULT`), the first node cannot run them all before the second node's
    # worker is up, whatever the machine's speed.
    with pytest.MonkeyPatch.context() as env:
        env.setenv(ENV, json.dumps([{"sleep_s": 0.5}]))
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster.address
    ray.shutdown()
    cluster.shutdown()


def test_trials_spread_over_both_nodes_and_log_to_the_server(two_nodes: str, mlflow_server: str,
                                                             tmp_path: Path) -> None:
    over = ["training.epochs=2", "source.epochs=2", "scheduler.type=none", "seeds=[0, 1]",
            "training.checkpoint_interval_s=0",
            "search_space={transfer_depth: 4, frozen_depth: {grid: [0, 1, 2]}, images_per_label: 5}"]
    summary = api.run(QUICK, overrides=over, name="multinode", address=two_nodes,
                      tracking_uri=mlflow_server, storage=tmp_path / "shared")
    assert summary.num_trials == 6 and summary.num_failed == 0
    frame = load_trials("multinode", mlflow_server)
    assert len(frame) == 6 and (frame["status"] == "FINISHED").all()
    assert frame["node"].nunique() == 2
    assert len(list((tmp_path / "shared").glob("multinode_*/*/checkpoint_*/trial.pt"))) >= 6


def test_storage_no_node_can_write_fails_before_any_trial(two_nodes: str, sqlite_uri: str, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(SearchError, match="--storage .*a-file/runs: cannot write there"):
        api.run(QUICK, overrides=["training.epochs=1", "source.epochs=1"], name="nostore", address=two_nodes,
                tracking_uri=sqlite_uri, storage=blocker / "runs")


def _png_folder(root: Path, classes: int = 2, per_class: int = 4) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / f"c{c}" / f"{i}.png")
    return root


def test_streamed_data_every_node_reads_passes_and_a_driver_only_path_fails(
    two_nodes: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder too large for memory is read where trials run. A path only the driver resolves (relative
    to its working directory, which Ray's workers do not share) is named per node before any trial."""
    from functools import partial

    from tunetl.data import DatasetSpec
    from tunetl.data.folder import decode_image, load_folder
    from tunetl.data.imageset import StreamingImageSet
    from tunetl.search.preflight import check_data, streamed_samples

    folder = _png_folder(tmp_path / "imgs")
    task = load_folder(DatasetSpec(path=str(folder)), memory_limit_bytes=0)
    assert isinstance(task.train, StreamingImageSet) and len(streamed_samples(task)) >= 4
    check_data([task])  # absolute paths on a file system both nodes share

    monkeypatch.chdir(tmp_path)
    relative = [str(Path(p).relative_to(tmp_path)) for p in task.train.paths]
    assert all(Path(p).is_file() for p in relative)  # the driver reads them
    decode = partial(decode_image, channels=1, size=(8, 8))
    driver_only = dataclasses.replace(task, train=StreamingImageSet(relative, task.train.labels, decode, 1, (8, 8)))
    with pytest.raises(SearchError, match=r"dataset .*not every Ray node can \(node \w+: imgs/c0/\d\.png: No such file.*; node \w+: imgs/"):
        check_data([driver_only])
