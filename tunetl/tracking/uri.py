"""Where MLflow records go, and whether that place answers before a search starts.

Workers run in other directories than the driver, so every URI handed out here is absolute; and an
unreachable server is reported at once with what to do, instead of after MLflow's long retries.
"""

from __future__ import annotations

import base64
import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

DEFAULT_DB = "mlflow.db"
_SQLITE = "sqlite:///"


class TrackingError(RuntimeError):
    """The MLflow records asked for do not exist or cannot be used."""


class TrackingUnavailable(TrackingError):
    """The tracking store cannot be reached or written."""


def _replace_userinfo(uri: str, by: str) -> str:
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{by}{host}", parts.path, parts.query, parts.fragment))


def redact(uri: str) -> str:
    """The URI without any `user:password@` part, safe to print (`tunetl.redaction`, the CLI's one rule)."""
    from tunetl.redaction import redact_text

    return redact_text(uri)


def adopt_credentials(uri: str) -> str:
    """Move a URI's `user:password@` into MLflow's own variables of this process and return the URI
    without them, so that no pickle, state file or log of a search carries them. Ray workers on this
    machine inherit the variables; on a cluster, set them on every node (docs/cluster.md)."""
    parts = urlsplit(uri)
    if parts.username:
        os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(parts.username)
    if parts.password:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(parts.password)
    return _replace_userinfo(uri, "")


def _absolute_sqlite(uri: str) -> str:
    """`sqlite:///rel.db` -> `sqlite:////abs/rel.db`; other URIs unchanged."""
    if not uri.startswith(_SQLITE):
        return uri
    path, sep, query = uri[len(_SQLITE) :].partition("?")
    if path in ("", ":memory:") or Path(path).is_absolute():
        return uri
    return f"{_SQLITE}{(Path.cwd() / path).resolve()}{sep}{query}"


def resolve_tracking_uri(cli_value: str | None = None) -> str:
    """CLI value, else `MLFLOW_TRACKING_URI`, else `mlflow.db` in the working directory; made absolute."""
    uri = cli_value or os.environ.get("MLFLOW_TRACKING_URI") or f"{_SQLITE}{Path.cwd() / DEFAULT_DB}"
    if "://" not in uri and uri.endswith(".db"):
        uri = f"{_SQLITE}{uri}"
    return _absolute_sqlite(uri)


def _scrub(text: str, uri: str) -> str:
    from tunetl.redaction import redact_text

    parts = urlsplit(uri)
    if parts.password:
        text = text.replace(parts.password, "***")
    return redact_text(text)


def _auth_header(uri: str) -> dict[str, str]:
    """The same credentials MLflow's REST client would send (URI userinfo or env)."""
    parts = urlsplit(uri)
    user = parts.username or os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = parts.password or os.environ.get("MLFLOW_TRACKING_PASSWORD")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if user and password:
        raw = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {raw}"}
    if token:
        return {"Authorization": f"Bearer {token}"}
    return {}


def _get(url: str, headers: dict[str, str], timeout_s: float) -> int:
    request = urllib.request.Request(url, headers=headers)
    # A fresh opener reads the proxy settings now; urlopen's global one keeps those of its first call.
    with urllib.request.build_opener().open(request, timeout=timeout_s) as response:
        return int(response.status)


def _check_http(uri: str, timeout_s: float) -> None:
    parts = urlsplit(uri)
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    headers = _auth_header(uri)
    shown = redact(uri)
    try:
        try:
            _get(f"{base}/health", headers, timeout_s)
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
            _get(f"{base}/api/2.0/mlflow/experiments/search?max_results=1", headers, timeout_s)
        return
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise TrackingUnavailable(
                f"MLflow tracking server at {shown} refused the credentials (HTTP {exc.code}); set "
                "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN"
            ) from None
        reason = f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = str(getattr(exc, "reason", exc)) or type(exc).__name__
    port = parts.port or (443 if parts.scheme == "https" else 80)
    raise TrackingUnavailable(
        f"MLflow tracking server at {shown} did not answer ({_scrub(reason, uri)}). Start it with "
        f"`mlflow server --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port {port}` "
        "or pass --tracking-uri sqlite:///mlflow.db to record locally"
    ) from None


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (its `?options` left out); None for other stores and
    in-memory databases."""
    if not uri.startswith(_SQLITE):
        return None
    path = uri[len(_SQLITE) :].partition("?")[0]
    return None if path in ("", ":memory:") else Path(path)


def _check_sqlite(uri: str) -> None:
    db = sqlite_file(uri)
    if db is None:
        return
    path, folder = str(db), db.parent
    if not folder.is_dir():
        raise TrackingUnavailable(
            f"MLflow database {path}: folder {folder} does not exist; create it or pass another "
            "--tracking-uri"
        )
    if not os.access(folder, os.W_OK) or (Path(path).exists() and not os.access(path, os.W_OK)):
        raise TrackingUnavailable(
            f"MLflow database {path} is not writable; fix the permissions or pass another --tracking-uri"
        )


#: Tracking-store schemes MLflow understands (database schemes may carry a driver: postgresql+psycopg2).
KNOWN_SCHEMES = ("http", "https", "sqlite", "file", "databricks", "databricks-uc", "uc", "postgresql", "mysql",
                 "mssql")


def check_scheme(uri: str) -> None:
    """A URI MLflow cannot use at all is an input error (exit 2), not a store that is down."""
    from tunetl.config import ConfigError

    scheme = urlsplit(uri).scheme.split("+", 1)[0].lower()
    if "://" in uri and scheme not in KNOWN_SCHEMES:
        raise ConfigError(
            f"--tracking-uri {redact(uri)}: unknown scheme {scheme!r}; use http(s)://HOST:PORT, sqlite:///FILE.db "
            "or another MLflow store (postgresql://, mysql://, file:///)"
        )


def check_tracking(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, with the next step, when the tracking store cannot take records."""
    check_scheme(uri)
    scheme = urlsplit(uri).scheme
    if scheme in ("http", "https"):
        _check_http(uri, timeout_s)
    else:
        _check_sqlite(uri)
