"""A tracking password given in `--tracking-uri` never reaches the terminal, whichever command fails and
whatever library wrote the message (tunetl's check, MLflow's own error text)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tunetl import cli
from tunetl.redaction import redact_text

SECRET = "s3cretPw!42"
SECRET_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def clean_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI moves a URI's credentials into MLflow's variables: undo that after the test."""
    for name in SECRET_VARS:
        monkeypatch.setenv(name, "placeholder")
        monkeypatch.delenv(name)


def test_redact_text_hides_userinfo_and_secret_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-123456")
    text = "at http://alice:pw@h:5000/x and s3://K:S@bucket/p with token tok-123456; ftp://plain/path"
    assert redact_text(text) == "at http://***@h:5000/x and s3://***@bucket/p with token ***; ftp://plain/path"


def _commands(uri: str, tmp: Path, experiment: str) -> dict[str, list[str]]:
    return {
        "best": ["best", "--experiment", experiment, "--tracking-uri", uri],
        "report": ["report", "--experiment", experiment, "--out", str(tmp / "rep"), "--tracking-uri", uri],
        "export": ["export", "--experiment", experiment, "--out", str(tmp / "t.parquet"), "--tracking-uri", uri],
        "predict": ["predict", "--dataset", "builtin:digits", "--tracking-uri", uri],
        "fit-regressor": ["fit-regressor", "--experiment", experiment, "--tracking-uri", uri],
    }


@pytest.mark.parametrize("command", ["best", "report", "export", "predict", "fit-regressor"])
def test_no_command_prints_the_password_of_a_server_that_does_not_answer(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], clean_credentials: None
) -> None:
    uri = f"http://bob:{SECRET}@127.0.0.1:{_closed_port()}/"
    rc = cli.main(_commands(uri, tmp_path, "x")[command])
    out = capsys.readouterr()
    assert rc == 1, out.err
    assert SECRET not in out.out + out.err and "did not answer" in out.err, out.err


@pytest.mark.slow
def test_mlflow_error_text_from_a_real_server_is_redacted(
    mlflow_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], clean_credentials: None
) -> None:
    """The server answers (no auth configured), the experiment does not exist: MLflow's and tunetl's
    messages quote the URI; the password is not in them."""
    uri = mlflow_server.replace("http://", f"http://bob:{SECRET}@")
    for command in ("best", "export", "report"):
        rc = cli.main(_commands(uri, tmp_path, "no-such-experiment")[command])
        out = capsys.readouterr()
        assert rc in (1, 2), out.err
        assert "no-such-experiment" in out.err and SECRET not in out.out + out.err, out.err
