"""ralf's logs: structured records (key=value text or JSON lines), passwords masked, and
periodic progress lines for long runs.

ralf logs through the standard ``logging`` module under the ``ralf`` logger and leaves
handlers to the application; :func:`configure` is what the ``ralf`` command calls (and what
an application may call) to send ralf's and uvicorn's records to one stream in one format.
Fields passed as ``extra={"table": ..., "key": ...}`` become fields of the record.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
# the URL's user:password@ part: the password is replaced, the rest kept for diagnosis
_PASSWORD = re.compile(r"(\b[a-zA-Z][\w+.-]*://[^/\s:@]*:)([^@\s/]+)(@)")
# attributes every LogRecord has: anything else was passed in ``extra`` and is a field
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def mask_passwords(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``
    (``postgresql://ralf:secret@db/x`` becomes ``postgresql://ralf:***@db/x``)."""
    return _PASSWORD.sub(r"\1***\3", text)


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """A record as ordered fields: time (UTC, ISO 8601), level, logger, message, the
    ``extra`` fields, then the traceback if it carries one; passwords masked."""
    out: dict[str, Any] = {
        "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": mask_passwords(record.getMessage()),
    }
    if record.name == "uvicorn.access" and isinstance(record.args, tuple) \
            and len(record.args) == 5:  # uvicorn's access line: its parts as fields
        out.update(zip(("client", "method", "path", "http", "status"), record.args,
                       strict=True))
    out.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
    if record.exc_info:
        out["exc"] = mask_passwords(logging.Formatter().formatException(record.exc_info))
    return out


class KeyValueFormatter(logging.Formatter):
    """One line per record: ``ts=... level=info logger=ralf msg="..." table=ratings``;
    values with spaces or quotes are quoted as JSON strings, a traceback follows
    indented."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as key=value pairs."""
        values = fields(record)
        trace = values.pop("exc", None)
        line = " ".join(f"{k}={_value(v)}" for k, v in values.items())
        if trace:
            line += "\n" + "\n".join("    " + t for t in trace.splitlines())
        return line


def _value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return json.dumps(text) if not text or re.search(r'[\s"=]', text) else text


class JsonFormatter(logging.Formatter):
    """One JSON object per line (the fields of :func:`fields`), for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line."""
        return json.dumps(fields(record), default=str)


def configure(level: str = "info", fmt: str = "text", stream: TextIO | None = None
              ) -> Callable[[], None]:
    """Send the ``ralf`` and ``uvicorn`` loggers' records at ``level`` and above to
    ``stream`` (default stderr) in ``fmt`` (``"text"``: key=value, ``"json"``: JSON lines),
    and not on to the root logger. Returns a function that puts back what was there before
    (the ``ralf`` command calls it on its way out, so an in-process caller keeps its own
    logging)."""
    if level not in LEVELS or fmt not in FORMATS:
        raise ValueError(f"level must be one of {LEVELS} and fmt one of {FORMATS}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    loggers = [logging.getLogger(name) for name in ("ralf", "uvicorn")]
    before = [(logger, logger.level, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(level.upper())
        logger.propagate = False

    def restore() -> None:
        for logger, old_level, propagate in before:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
            logger.propagate = propagate
    return restore


class Progress:
    """Periodic progress lines: :meth:`maybe` logs ``line()`` at info level on ``logger``
    when ``every`` seconds have passed since the last one (0 or None: never)."""

    def __init__(self, logger: logging.Logger, line: Callable[[], str],
                 every: float | None) -> None:
        self._logger, self._line, self._every = logger, line, every
        self._last = time.monotonic()

    def maybe(self) -> None:
        """Log a line if one is due (the line is only built when it is)."""
        if not self._every or not self._logger.isEnabledFor(logging.INFO):
            return
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            self._logger.info("%s", self._line())
