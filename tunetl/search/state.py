"""A search's state file (`tunetl_search.json` in its folder): the one schema, written by the driver and read
by resume, `--more`, `export --from-storage` and `sync`.

JSON only (never a pickle): the read tools open folders other people wrote. Written whole each time, so a
killed driver never leaves half a file.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from tunetl.records import STATE_FILE
from tunetl.search.storage import Storage


@dataclass(frozen=True)
class SearchState:
    """What a search folder says about its search."""

    #: `ExperimentConfig.fingerprint()`: resume only continues a search of the same inputs.
    fingerprint: str
    #: The MLflow parent run every trial's child run hangs under (None only in a foreign or broken file).
    parent_run_id: str | None
    experiment: str
    tracking_uri: str | None = None
    #: False while the search runs or after it stopped early (Ctrl-C, SIGTERM, kill -9): the same command
    #: resumes it.
    finished: bool = False
    #: The experiment as `ExperimentConfig.model_dump(mode="json")`.
    config: dict[str, Any] = field(default_factory=dict)
    #: For `--more`: the finished search whose trials this one continues.
    more_of: str | None = None

    def to_json(self) -> str:
        body = dataclasses.asdict(self)
        if self.more_of is None:
            del body["more_of"]
        return json.dumps(body, indent=2)

    @classmethod
    def from_json(cls, text: str) -> SearchState:
        """Parse a state file; ValueError when it is not a JSON object. Missing fields take their defaults
        (files from older tunetl versions), unknown ones are ignored."""
        body = json.loads(text)
        if not isinstance(body, dict):
            raise ValueError(f"expected a JSON object, got {type(body).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in body.items() if k in known}
        values.setdefault("fingerprint", "")
        values.setdefault("parent_run_id", None)
        values.setdefault("experiment", "")
        values["finished"] = bool(values.get("finished", False))
        values["config"] = dict(values.get("config") or {})
        return cls(**values)

    def but(self, **changes: Any) -> SearchState:
        """A copy with `changes` (e.g. `finished=True`)."""
        return dataclasses.replace(self, **changes)


def write_state(storage: Storage, run: str, state: SearchState) -> None:
    """Write a search's state file whole."""
    storage.write_text(state.to_json(), run, STATE_FILE)


def read_state(storage: Storage, run: str) -> SearchState:
    return SearchState.from_json(storage.read_text(run, STATE_FILE))
