"""Tracking URI resolution and the fail-fast reachability check."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tunetl.tracking import TrackingUnavailable, check_tracking, resolve_tracking_uri


def _dead_port() -> int:
    """A local port that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_cli_value_beats_env_beats_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri() == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("http://10.0.0.1:5001") == "http://10.0.0.1:5001"


def test_relative_sqlite_paths_become_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri("sqlite:///runs/x.db") == f"sqlite:///{tmp_path / 'runs' / 'x.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path / 'env.db'}"
    assert resolve_tracking_uri("sqlite:////abs/y.db") == "sqlite:////abs/y.db"
    assert resolve_tracking_uri("local.db") == f"sqlite:///{tmp_path / 'local.db'}"


@pytest.mark.timeout(30)
def test_server_that_does_not_answer_is_reported() -> None:
    port = _dead_port()
    with pytest.raises(TrackingUnavailable) as info:
        check_tracking(f"http://127.0.0.1:{port}", timeout_s=2.0)
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "did not answer" in message and "--tracking-uri" in message


@pytest.mark.timeout(30)
def test_credentials_never_appear_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "envSecret42")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tokSecret43")
    uri = f"http://alice:uriSecret41@127.0.0.1:{_dead_port()}"
    with pytest.raises(TrackingUnavailable) as info:
        check_tracking(uri, timeout_s=2.0)
    message = str(info.value)
    for secret in ("uriSecret41", "envSecret42", "tokSecret43", "alice"):
        assert secret not in message
    assert "127.0.0.1" in message


def test_sqlite_needs_an_existing_writable_folder(tmp_path: Path) -> None:
    check_tracking(f"sqlite:///{tmp_path / 'ok.db'}")
    missing = tmp_path / "nope" / "x.db"
    with pytest.raises(TrackingUnavailable, match="does not exist"):
        check_tracking(f"sqlite:///{missing}")


def test_credentials_in_the_uri_move_to_mlflows_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from tunetl.tracking import adopt_credentials

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    assert adopt_credentials("http://127.0.0.1:5000/mlflow") == "http://127.0.0.1:5000/mlflow"
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ
    assert adopt_credentials("https://bob:p%40ss@mlflow.example:8443/x?a=1") == "https://mlflow.example:8443/x?a=1"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "bob"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "p@ss"
    assert adopt_credentials("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
