"""Shared fixtures: a SQLite tracking URI, a real MLflow server, and an environment free of MLFLOW_*."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

# A loaded CI machine may need longer: TUNETL_TEST_SERVER_START_S raises the wait.
_SERVER_START_S = float(os.environ.get("TUNETL_TEST_SERVER_START_S", "90"))


@pytest.fixture(scope="session", autouse=True)
def _own_feature_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The node-level feature cache of this test session, not the machine's default folder (Ray workers
    inherit the variable from this process)."""
    old = os.environ.get("TUNETL_FEATURE_CACHE")
    os.environ["TUNETL_FEATURE_CACHE"] = str(tmp_path_factory.mktemp("feature-cache"))
    yield
    if old is None:
        os.environ.pop("TUNETL_FEATURE_CACHE", None)
    else:
        os.environ["TUNETL_FEATURE_CACHE"] = old


@pytest.fixture(autouse=True)
def _no_mlflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests must not depend on (or write into) the developer's MLflow settings."""
    for name in [n for n in os.environ if n.startswith("MLFLOW_")]:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def sqlite_uri(tmp_path: Path) -> str:
    """An absolute SQLite tracking URI in this test's folder."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(uri: str) -> bool:
    try:
        # The server is local: never through a proxy (urlopen's global opener caches the proxy
        # variables of its first use, which another test may have pointed at a closed port).
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with direct.open(f"{uri}/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is left in the group (zombies may wait on an init that never reaps)."""
    proc_root = Path("/proc")
    if not proc_root.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc_root.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL, to the server's whole process group (uvicorn workers and huey too)."""
    for sig, wait_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while (proc.poll() is None or _group_alive(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        if proc.poll() is not None and not _group_alive(proc.pid):
            break
    proc.wait(timeout=5)


def start_mlflow_server(root: Path, port: int, db: Path | None = None) -> subprocess.Popen[bytes]:
    """A real `mlflow server` on 127.0.0.1:`port` backed by SQLite `db` (default `root/srv.db`), in its own
    process group (stop it with `_stop_group`); returns once /health answers. Starting it again on the same
    port and database is how tests restart a tracking server."""
    db = db or root / "srv.db"
    uri = f"http://127.0.0.1:{port}"
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{db}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    log_path = root / f"server-{port}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True
        )
    deadline = time.monotonic() + _SERVER_START_S
    while not _healthy(uri):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop_group(proc)
            tail = log_path.read_text(errors="replace")[-3000:]
            pytest.fail(f"mlflow server on port {port} did not become healthy:\n{tail}")
        time.sleep(0.5)
    return proc


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` on a free local port, backed by SQLite; yields its http URI."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    proc = start_mlflow_server(root, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop_group(proc)
