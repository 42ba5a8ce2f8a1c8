"""A CSV file as a batch source, parsed by DuckDB's CSV reader (never row by row in Python).

Lines whose values do not convert are not lost: DuckDB's reject tables catch them and they
go to ``ralf.rejected`` with the line and the reason, while the rest of the file loads.
"""

from __future__ import annotations

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
    """The whole file as one batch; a header row naming the schema's columns is required."""

    def __init__(self, path: str | Path, schema: Schema) -> None:
        self.path = str(path)
        self.schema = schema
        self.done = False
        self.rejected: list[Rejection] = []

    def take_rejected(self) -> list[Rejection]:
        """Lines the last read refused (ingestion files them under the table's name)."""
        rejected, self.rejected = self.rejected, []
        return rejected

    def checkpoint(self) -> dict[str, Any]:
        return {"done": self.done}

    def restore(self, state: dict[str, Any]) -> None:
        self.done = state["done"]

    def next(self) -> pa.Table | None:
        if self.done:
            return None
        if not Path(self.path).is_file():
            raise FileNotFoundError(f"CSV source: no such file {self.path!r}")
        con = duckdb.connect()
        try:
            self._check_header(con)
            columns = ", ".join(
                f"{_literal(n)}: {_literal(self.schema.sql_type(n))}" for n in self.schema.names)
            data = con.sql(
                f"SELECT * FROM read_csv(?, header = true, columns = {{{columns}}}, "
                "store_rejects = true)", params=[self.path]).to_arrow_table()
            self.rejected = [
                Rejection(
                    table="",
                    reason=f"{self.path}, line {line}: column {column!r}: {message}",
                    column=column,
                    raw={"line": line, "csv": csv_line},
                )
                for line, column, message, csv_line in con.execute(
                    "SELECT line, column_name, error_message, csv_line FROM reject_errors "
                    "ORDER BY line").fetchall()
            ]
        finally:
            con.close()
        self.done = True
        return data

    def _check_header(self, con: duckdb.DuckDBPyConnection) -> None:
        header = [row[0] for row in con.execute(
            "DESCRIBE SELECT * FROM read_csv(?, header = true)", [self.path]).fetchall()]
        for name in self.schema.names:
            if name not in header:
                raise SchemaError(f"CSV file {self.path!r} has no column {name!r}", column=name)
        for name in header:
            if name not in self.schema.columns:
                raise SchemaError(f"CSV file {self.path!r} has an unexpected column {name!r}",
                                  column=name)
