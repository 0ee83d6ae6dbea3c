"""`--storage s3://...`: a search keeps its state, checkpoints and source cache in an object store.

The store is a real S3 API over HTTP on 127.0.0.1 (moto's server, the nearest thing to S3 that runs
here); tunetl, Ray Tune and pyarrow reach it exactly as they would reach AWS, through `AWS_ENDPOINT_URL`
and the AWS credential variables.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
QUICK = str(ROOT / "experiments" / "quickstart.yaml")
SETS = ["training.epochs=2", "source.epochs=2", "scheduler.type=none", "seeds=[0]",
        "search_space={conditions: {grid: [{name: base, transfer_depth: 0}, {name: S2T, transfer_depth: 2, "
        "frozen_depth: 2}]}, images_per_label: 5}"]


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "RAY_ADDRESS"))}
    env.update(AWS_ACCESS_KEY_ID="tunetl-test", AWS_SECRET_ACCESS_KEY="tunetl-test", AWS_DEFAULT_REGION="us-east-1",
               AWS_ENDPOINT_URL=f"http://{host}:{port}", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    try:
        yield env
    finally:
        server.stop()


def _fs(env: dict[str, str]):  # type: ignore[no-untyped-def]
    import pyarrow.fs as pafs

    return pafs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], access_key=env["AWS_ACCESS_KEY_ID"],
                             secret_key=env["AWS_SECRET_ACCESS_KEY"], region="us-east-1",
                             allow_bucket_creation=True)


def _tunetl(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "tunetl.cli", *args]
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def _files(env: dict[str, str], prefix: str) -> list[str]:
    import pyarrow.fs as pafs

    infos = _fs(env).get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File)


def test_search_state_checkpoints_and_source_cache_go_to_the_object_store(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    _fs(s3_env).create_dir("tunetl-bucket")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["run", QUICK, "--storage", "s3://tunetl-bucket/runs", "--tracking-uri", uri, "--num-cpus", "2"]
    for s in SETS:
        argv += ["--set", s]
    first = _tunetl(s3_env, tmp_path, *argv)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    files = _files(s3_env, "tunetl-bucket/runs")
    assert [f for f in files if f.endswith("/tunetl_search.json")]
    assert len([f for f in files if f.endswith("/trial.pt")]) == 2
    assert [f for f in files if "/cache/sources/" in f and f.endswith(".pt")]
    assert not (tmp_path / "tunetl_runs").exists()

    from tunetl.tracking import load_trials

    frame = load_trials("quickstart", uri)
    assert len(frame) == 2 and (frame["status"] == "FINISHED").all()
    assert frame["parent_run_id"].nunique() == 1
    # the winner's best-epoch weights were read back from the bucket and logged on the parent run
    assert "logged the winner" in first.stderr
    from mlflow import MlflowClient

    parent = MlflowClient(uri).get_run(frame["parent_run_id"].iloc[0])
    assert "model_test_acc" in parent.data.metrics

    again = _tunetl(s3_env, tmp_path, *argv, "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    after = load_trials("quickstart", uri)
    assert len(after) == 2 and set(after["run_id"]) == set(frame["run_id"])


def test_an_unusable_bucket_is_refused_before_any_trial(s3_env: dict[str, str], tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = _tunetl(s3_env, tmp_path, "run", QUICK, "--storage", "s3://no-such-bucket/runs", "--tracking-uri", uri,
                     "--num-cpus", "1", *[a for s in SETS for a in ("--set", s)])
    assert result.returncode == 2, result.stderr[-3000:]
    assert "--storage s3://no-such-bucket/runs" in result.stderr
    from tunetl.tracking import TrackingError, load_trials

    with pytest.raises(TrackingError, match="no MLflow experiment"):
        load_trials("quickstart", uri)
