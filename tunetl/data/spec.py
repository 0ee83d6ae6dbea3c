"""`DatasetSpec`: what the YAML/CLI say about a dataset (`tunetl.data.loading` turns it into data).

This module imports neither torch nor numpy at import time, so that `tunetl.config` and the CLI can
validate specs cheaply; loading pulls the heavy modules in lazily.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    pass

#: Folders whose decoded uint8 pixels exceed this many bytes are streamed from disk instead.
MEMORY_LIMIT_BYTES = 1_500_000_000

_BUILTIN_RE = re.compile(r"^builtin:(?P<name>[^\[\]]+)(?:\[(?P<classes>[^\]]*)\])?$")


class DataError(ValueError):
    """A dataset that cannot be loaded as asked: the message names the file, field or value."""


class DatasetSpec(BaseModel):
    """A target or source dataset: a built-in by name or an ImageFolder path, optionally a class subset.

    The validation split is part of the spec (`val_fraction`, `split_seed`) so that it is the same for
    every trial of a search, whatever the trial's seed. `bad_files` says what a folder's pre-flight scan
    does with files it cannot use: fail naming them (default), or skip them with a warning; built-ins
    ignore it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    builtin: str | None = None
    path: str | None = None
    classes: list[int | str] | None = None
    val_fraction: float = Field(default=0.3, gt=0.0, lt=1.0)
    #: Share of each class held out as the test split, carved before the validation split (0: none).
    test_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    #: Folder datasets: a separate ImageFolder with the same classes used as the test split instead.
    test_path: str | None = None
    split_seed: int = Field(default=0, ge=0)
    bad_files: Literal["fail", "skip"] = "fail"

    @field_validator("builtin", "path")
    @classmethod
    def _not_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("classes", mode="before")
    @classmethod
    def _no_bools(cls, v: object) -> object:
        if isinstance(v, list) and any(isinstance(c, bool) for c in v):
            raise ValueError(f"class entries must be names or integer labels, got {v!r}")
        return v

    @field_validator("classes")
    @classmethod
    def _distinct_classes(cls, v: list[int | str] | None) -> list[int | str] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("must list at least one class (omit `classes` to use all of them)")
        seen = [str(c) for c in v]
        dupes = sorted({c for c in seen if seen.count(c) > 1})
        if dupes:
            raise ValueError(f"lists a class more than once: {', '.join(dupes)}")
        return v

    @model_validator(mode="after")
    def _exactly_one_source(self) -> DatasetSpec:
        if (self.builtin is None) == (self.path is None):
            got = "both" if self.builtin is not None else "neither"
            raise ValueError(
                f"dataset needs exactly one of `builtin` or `path` (got {got}); "
                "e.g. `builtin: digits` or `path: /data/flowers`"
            )
        return self

    @model_validator(mode="after")
    def _one_test_split(self) -> DatasetSpec:
        if self.test_path is not None and self.test_fraction > 0:
            raise ValueError("give test_fraction (carve a test split) or test_path (a test folder), not both")
        if self.test_path is not None and self.path is None:
            raise ValueError("test_path is for folder datasets (`path:`); built-ins use test_fraction")
        if self.val_fraction + self.test_fraction >= 1:
            total = self.val_fraction + self.test_fraction
            raise ValueError(f"val_fraction + test_fraction must be < 1, got {total:g}")
        return self

    @classmethod
    def parse(cls, text: str, **fields: object) -> DatasetSpec:
        """Build a spec from the CLI form `builtin:NAME`, `builtin:NAME[a,b,...]` or a folder path."""
        text = text.strip()
        match = _BUILTIN_RE.match(text)
        if match is None:
            if text.startswith("builtin:"):
                raise DataError(f"cannot parse dataset {text!r}: expected builtin:NAME or builtin:NAME[a,b]")
            return cls(path=text, **fields)  # type: ignore[arg-type]
        classes = match.group("classes")
        if classes is not None:
            fields = {**fields, "classes": [_parse_class(c) for c in classes.split(",") if c.strip()]}
        return cls(builtin=match.group("name").strip(), **fields)  # type: ignore[arg-type]

    def display_name(self) -> str:
        """The dataset's name in records: `digits`, `digits[5,6,7]`, or a folder's basename."""
        import os

        if self.builtin is not None:
            base = self.builtin
        else:
            assert self.path is not None
            base = os.path.basename(os.path.normpath(os.path.expanduser(self.path))) or self.path
        if self.classes is None:
            return base
        return f"{base}[{','.join(str(c) for c in self.classes)}]"


def _parse_class(text: str) -> int | str:
    text = text.strip()
    return int(text) if re.fullmatch(r"-?\d+", text) else text
