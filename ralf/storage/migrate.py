"""Versioned migrations: ``migrations/NNNN_name.sql`` applied in order, each once.

A file is a script of SQL statements, split by the database's own parser
(``Transaction.script``: DuckDB's ``extract_statements``; PostgreSQL's simple query protocol
runs a string without parameters whole), so a ``;`` inside a string, a comment or a ``$$``
body is no statement end.

The files live at the top of the repository and ship inside the wheel as
``ralf/_migrations``; both places are looked up so editable and regular installs work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")


@dataclass(frozen=True)
class Migration:
    """One migration file: its version number, name and SQL."""

    version: int
    name: str
    sql: str


def migrations_dir() -> Path:
    """The directory of the migration files: inside the installed package, else at the
    top of the repository; raises FileNotFoundError if neither exists."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_migrations", package.parent / "migrations"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("ralf's migrations/ directory is missing from this installation")


def available(directory: Path | None = None) -> list[Migration]:
    """The migrations in ``directory`` (default :func:`migrations_dir`), in version
    order; raises ValueError unless they are numbered 1, 2, ... without gaps."""
    directory = directory or migrations_dir()
    found = []
    for path in sorted(directory.iterdir()):
        match = _FILE.match(path.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), path.read_text()))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise ValueError(f"migrations must be numbered 0001, 0002, ... without gaps: {versions}")
    return found

