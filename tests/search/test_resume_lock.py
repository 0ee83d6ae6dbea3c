"""Which search `tunetl run` continues, decided before Ray starts: an unfinished search that another
driver still holds (its lock file taken, for real, by this process) is never resumed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunetl import api
from tunetl.config import ConfigError, load_experiment
from tunetl.records import STATE_FILE
from tunetl.search import session as sess
from tunetl.search.preflight import open_storage
from tunetl.search.state import SearchState, write_state
from tunetl.search.storage import Storage

QUICK = Path(__file__).resolve().parents[2] / "experiments" / "quickstart.yaml"


def _unfinished(storage: Path, name: str) -> Storage:
    store = open_storage(storage)
    exp = load_experiment(QUICK)
    write_state(store, name, SearchState(exp.fingerprint(), "p", exp.name, "sqlite:///x.db"))
    return store


def test_resume_refuses_a_search_another_driver_holds(tmp_path: Path) -> None:
    store = _unfinished(tmp_path / "runs", "quickstart_20260101-000000")
    held = sess.DriverLock(store, "quickstart_20260101-000000")
    assert held.acquire()
    try:
        with pytest.raises(ConfigError, match=r"quickstart_20260101-000000 is being run by another tunetl process"):
            api.run(QUICK, tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", storage=tmp_path / "runs", resume=True)
    finally:
        held.release()
    assert not (tmp_path / "m.db").exists()  # refused before any MLflow run


def test_the_newest_unfinished_search_no_driver_holds_is_the_one_resumed(tmp_path: Path) -> None:
    import os

    store = _unfinished(tmp_path / "runs", "quickstart_20260101-000000")
    _unfinished(tmp_path / "runs", "quickstart_20260102-000000")
    older = store.local_path / "quickstart_20260101-000000" / STATE_FILE
    os.utime(older, (1, 1))  # the 01-01 search is the older one
    assert sess.unfinished_run_dir(store, "quickstart") == ("quickstart_20260102-000000", None)
    newer = sess.DriverLock(store, "quickstart_20260102-000000")
    assert newer.acquire()
    try:
        assert sess.unfinished_run_dir(store, "quickstart") == ("quickstart_20260101-000000", "quickstart_20260102-000000")
    finally:
        newer.release()


def test_the_state_file_round_trips_and_reads_older_files(tmp_path: Path) -> None:
    """One schema: what the driver writes reads back equal; a file without newer fields (or with unknown
    ones) still reads, and a file that is not a JSON object is refused."""
    from tunetl.search.state import read_state

    store = open_storage(tmp_path)
    state = SearchState("f", "p", "quickstart", "sqlite:///x.db", config={"name": "quickstart"})
    write_state(store, "quickstart_20260101-000000", state.but(finished=True))
    assert read_state(store, "quickstart_20260101-000000") == state.but(finished=True)
    assert SearchState.from_json('{"fingerprint": "f", "parent_run_id": "p", "extra": 1}') == SearchState("f", "p", "")
    with pytest.raises(ValueError, match="JSON object"):
        SearchState.from_json("[1, 2]")
