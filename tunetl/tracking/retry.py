"""Tracking calls that outlive a store outage: short HTTP retries, a bounded wait, a warning, no crash.

MLflow's REST client retries a refused request 7 times with exponential backoff (about 4 minutes) and
then raises; inside a trial that stalls training and then kills it. tunetl's own calls run with one
immediate retry and a 15 s request timeout instead (`bounded_http`; the waiting is done here, where it
can be bounded), and each caller says how long a result is worth waiting for: an epoch's metrics are
not (they are kept and re-sent with the next call); the run a trial needs, or its end, are (`wait_s`,
counted from the start of the outage, so a long outage costs each process that wait once, not once
per call).
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from tunetl.tracking.uri import TrackingError

T = TypeVar("T")

#: MLflow's HTTP settings for tunetl's own calls, unless the user set them (their values win).
HTTP_LIMITS: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}
#: How long creating, finding or ending a run waits for the store to come back (from the start of the
#: outage) before the trial goes on without it; `TUNETL_TRACKING_WAIT_S` overrides it.
DEFAULT_WAIT_S = 60.0
WAIT_ENV = "TUNETL_TRACKING_WAIT_S"
#: While the store is down, calls that need not wait try it again at most this often.
PROBE_S = 5.0
# MLflow error codes that no retry can fix: the record is refused, not lost in transit.
_REFUSED = frozenset({
    "INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "INVALID_STATE",
    "PERMISSION_DENIED", "UNAUTHENTICATED", "BAD_REQUEST", "FEATURE_DISABLED", "ENDPOINT_NOT_FOUND",
})


class StoreUnavailable(RuntimeError):
    """The tracking store did not answer within the wait the caller allowed; the record may be re-sent."""


class StoreRefused(RuntimeError):
    """The tracking store answered and refused the record; re-sending it cannot help."""


@dataclass
class _Outage:
    """This process's view of one store: down since when, and when to try it again."""

    since: float | None = None
    next_try: float = 0.0
    reason: str = ""


#: Per store (its URI as shown), in this process.
_OUTAGES: dict[str, _Outage] = {}


def configured_wait_s() -> float:
    """`TUNETL_TRACKING_WAIT_S` when set (seconds, >= 0), else `DEFAULT_WAIT_S`."""
    text = os.environ.get(WAIT_ENV, "").strip()
    if not text:
        return DEFAULT_WAIT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise TrackingError(f"{WAIT_ENV}={text!r}: give a number of seconds >= 0 (default {DEFAULT_WAIT_S:g})")
    return value


def warn(message: str) -> None:
    """A tracking problem never fails a trial; it is said on stderr (the worker's log under Ray)."""
    print(f"[tunetl] warning: {message}", file=sys.stderr, flush=True)


@contextmanager
def bounded_http() -> Iterator[None]:
    """MLflow reads its HTTP retry settings per request from the environment: set ours for the call."""
    added = [k for k in HTTP_LIMITS if k not in os.environ]
    for key in added:
        os.environ[key] = HTTP_LIMITS[key]
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def transient(exc: BaseException) -> bool:
    """Whether `exc` says the store could not be reached (or was busy) rather than that it refused."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return exc.error_code not in _REFUSED
    try:
        from sqlalchemy.exc import OperationalError
    except ImportError:  # pragma: no cover - sqlalchemy comes with mlflow
        return isinstance(exc, OSError)
    return isinstance(exc, (OSError, OperationalError))


def _reason(exc: BaseException) -> str:
    """The short cause of a failed call ("Connection refused"), not MLflow's whole retry story."""
    seen: BaseException | None = exc
    for _ in range(20):
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.strerror:
            return str(seen.strerror)
        seen = seen.__cause__ or seen.__context__
    text = " ".join(str(exc).split())
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    return errno.group(1).strip() if errno else text[:300] or type(exc).__name__


def store_down(where: str) -> bool:
    """Whether this process's last call to the store `where` failed to reach it."""
    return _OUTAGES.get(where, _Outage()).since is not None


def call(fn: Callable[[], T], *, what: str, where: str, wait_s: float = 0.0) -> T:
    """`fn()` against the store. Raises StoreRefused at once, StoreUnavailable once `wait_s` (counted
    from the start of the outage) is spent; during an outage a call with no wait does not even try
    more often than every `PROBE_S` seconds, so training never waits on a dead server."""
    outage = _OUTAGES.setdefault(where, _Outage())
    now = time.monotonic()
    deadline = max(now, (outage.since if outage.since is not None else now) + wait_s)
    if outage.since is not None and wait_s <= 0 and now < outage.next_try:
        raise StoreUnavailable(f"MLflow at {where} is unreachable ({outage.reason})")
    while True:
        try:
            with bounded_http():
                result = fn()
        except Exception as exc:  # noqa: BLE001 - sorted into refused / unreachable below
            text = _reason(exc)
            if not transient(exc):
                raise StoreRefused(f"MLflow at {where} refused {what}: {text}") from exc
            now = time.monotonic()
            if outage.since is None:
                outage.since = now
                warn(f"MLflow at {where} did not take {what} ({text}); training goes on and tunetl "
                     "keeps the records to re-send")
            outage.reason = text
            outage.next_try = now + PROBE_S
            if now >= deadline:
                raise StoreUnavailable(f"MLflow at {where} is unreachable ({text})") from exc
            time.sleep(min(PROBE_S, deadline - now))
            continue
        if outage.since is not None:
            warn(f"MLflow at {where} answers again after {time.monotonic() - outage.since:.0f} s")
            outage.since = None
        return result
