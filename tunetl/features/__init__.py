"""Dataset features that need the source model: torch forward passes over a task's images (`task`: the
`feature.*` values every trial records; `rank`: `tunetl rank`'s zero-shot scores per backbone) and the
scores computed from those outputs (`transferability`: LogME, LEEP, H-score, NCE).

The driver computes them before Ray starts and hands them to the trials as plain values, so `search/`
never imports this package; `source_match` finds a recorded source again for `features`/`predict`.
`meta/` above reads only the trials table these values end up in (no torch there).
"""
