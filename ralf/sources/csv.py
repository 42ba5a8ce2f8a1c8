"""A CSV file as a batch source, parsed by DuckDB's CSV reader (never row by row in Python).

Lines that do not parse — a value that does not convert, a field too many or too few —
are not lost and do not take the file down: DuckDB's reject tables catch them and they go
to ``ralf.rejected`` with their line number and the reason, while the rest of the file
loads. The header is read as the file's first line (not sniffed: one ragged line would
confuse a sniffer about the whole file).

The source's position is the bytes of the file it has read. Each read takes everything
up to the end of the file; a later read (after a reopen, for instance) takes only what
was appended since, so a file that grows is read on, never twice. Append whole lines.
"""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from ralf.errors import SchemaError
from ralf.operators import SourceOperator
from ralf.schema import Rejection, Schema


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class CsvSource(SourceOperator):
    """A CSV file with a header row naming the schema's columns; what it holds now, then
    (on later reads) whatever is appended to it."""

    def __init__(self, path: str | Path, schema: Schema) -> None:
        self.path = str(path)
        self.schema = schema
        self.offset = 0  # bytes of the file already read
        self.lines = 0  # lines already read, the header included
        self.rejected: list[Rejection] = []

    def take_rejected(self) -> list[Rejection]:
        """Lines the last read refused (ingestion files them under the table's name)."""
        rejected, self.rejected = self.rejected, []
        return rejected

    def checkpoint(self) -> dict[str, Any]:
        """The position: the bytes and lines of the file read so far."""
        return {"offset": self.offset, "lines": self.lines}

    def restore(self, state: dict[str, Any]) -> None:
        """Resume from a :meth:`checkpoint` (or from an older ralf's ``{"done": ...}``: the
        file as it is now if done, else from the start)."""
        if "offset" in state:
            self.offset, self.lines = state["offset"], state["lines"]
            return
        # {"done": bool}, from a ralf that read a file once: as it is now, or nothing
        file = Path(self.path)
        done = state.get("done") and file.is_file()
        self.offset = file.stat().st_size if done else 0
        self.lines = file.read_bytes().count(b"\n") if done else 0

    def next(self) -> pa.Table | None:
        """What was appended to the file since the last read, parsed (refused lines kept
        for :meth:`take_rejected`); None when nothing is new. FileNotFoundError without the file."""
        file = Path(self.path)
        if not file.is_file():
            raise FileNotFoundError(f"CSV source: no such file {self.path!r}")
        with file.open("rb") as handle:
            header = handle.readline()
            handle.seek(self.offset)
            new = handle.read()
        if not new:
            return None  # nothing (more) to read: exhausted for now
        if self.offset == 0:
            self._check_header(header)
            body, first_line = new, 1
        else:
            body, first_line = header + new, self.lines  # the header, then the new lines
        data = self._parse(body, first_line)
        self.offset += len(new)
        self.lines += new.count(b"\n") + (not new.endswith(b"\n"))
        return data

    def _check_header(self, header: bytes) -> None:
        names = next(csv.reader(io.StringIO(header.decode("utf-8", "replace"))), [])
        names = [n.strip() for n in names]
        for name in self.schema.names:
            if name not in names:
                raise SchemaError(f"CSV file {self.path!r} has no column {name!r} in its "
                                  f"header {names}", column=name)
        for name in names:
            if name not in self.schema.columns:
                raise SchemaError(f"CSV file {self.path!r} has an unexpected column {name!r} "
                                  "in its header", column=name)

    def _parse(self, body: bytes, first_line: int) -> pa.Table:
        """The rows of ``body`` (a header line, then data lines); lines that do not parse
        are kept as rejections, numbered as in the file (``first_line``: the number of
        the line before the first data line)."""
        columns = ", ".join(f"{_literal(n)}: {_literal(self.schema.sql_type(n))}"
                            for n in self.schema.names)
        with tempfile.NamedTemporaryFile(suffix=".csv") as part:
            part.write(body)
            part.flush()
            con = duckdb.connect()
            try:
                data = con.sql(
                    f"SELECT * FROM read_csv(?, header = true, columns = {{{columns}}}, "
                    "store_rejects = true, auto_detect = false)",
                    params=[part.name]).to_arrow_table()
                refused = con.execute(
                    "SELECT line, column_name, error_message, csv_line FROM reject_errors "
                    "ORDER BY line").fetchall()
            finally:
                con.close()
        for line, column, message, csv_line in refused:
            where = f"line {first_line + line - 1}"
            what = f"column {column!r}: " if column else ""
            self.rejected.append(Rejection(
                table="", reason=f"{self.path}, {where}: {what}{message}", column=column,
                raw={"line": first_line + line - 1, "csv": csv_line}))
        return data
