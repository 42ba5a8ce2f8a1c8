"""Fault injection for crash-point tests: ``RALF_CRASH_AT=point[@n]`` SIGKILLs the process
the n-th time (default: first) execution reaches ``crashpoint("point")``.

Unset (always, outside tests) it costs one global lookup per call.
"""

from __future__ import annotations

import os
import signal

_TARGET: tuple[str, int] | None = None
_SEEN: dict[str, int] = {}
_spec = os.environ.get("RALF_CRASH_AT")
if _spec:
    _name, _, _nth = _spec.partition("@")
    _TARGET = (_name, int(_nth or 1))

POINTS = (
    # ingestion
    "ingest.before_next", "ingest.after_next", "ingest.after_validate",
    "append.in_transaction", "append.before_commit", "append.after_commit",
    # refresh, Python operators
    "refresh.after_read", "refresh.in_operator", "refresh.after_operator",
    "refresh.after_checkpoint", "refresh.in_transaction", "refresh.after_upsert",
    "refresh.after_history", "refresh.after_watermarks", "refresh.before_commit",
    "refresh.after_commit", "refresh.after_cache",
    # refresh, SQL-maintained tables
    "view.in_transaction", "view.after_upsert", "view.before_commit", "view.after_commit",
    # lazy refresh on query, and the tick boundary
    "lazy.before_refresh", "tick.end",
)


def crashpoint(name: str) -> None:
    if _TARGET is None or _TARGET[0] != name:
        return
    _SEEN[name] = _SEEN.get(name, 0) + 1
    if _SEEN[name] == _TARGET[1]:
        os.kill(os.getpid(), signal.SIGKILL)
