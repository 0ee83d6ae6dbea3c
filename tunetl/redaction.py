"""The one redaction of what tunetl prints: credentials in URIs and MLflow's secret variables.

The CLI routes everything it writes to stdout and stderr through `redact_text`, so a password in
`--tracking-uri http://user:secret@host/` never reaches a terminal or a log, whichever library's error
text carries it (MLflow's own messages quote the URI whole).
"""

from __future__ import annotations

import os
import re
from typing import Any, TextIO

_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s'\"<>]+@")
SECRET_VARIABLES = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME",
                    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def redact_text(text: str) -> str:
    """`text` with every URI's `user:password@` replaced by `***@` and every secret variable's value by `***`."""
    text = _USERINFO.sub(r"\1***@", text)
    for name in SECRET_VARIABLES:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


class RedactingStream:
    """A text stream that redacts what is written to it before passing it on."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact_text(text))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
