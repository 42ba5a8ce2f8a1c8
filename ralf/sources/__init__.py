"""Built-in sources: CSV files (more in later issues)."""

from ralf.sources.csv import CsvSource

__all__ = ["CsvSource"]
