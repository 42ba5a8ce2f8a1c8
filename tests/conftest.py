"""Fixtures: ``server`` and ``database`` run each test once per storage backend."""

from __future__ import annotations

import pytest

from ralf import Ralf
from ralf.testing import drop_postgres_database, new_postgres_database
from tests.services import postgres_server

BACKENDS = ["duckdb", "postgres"]


@pytest.fixture(scope="session")
def postgres_url():
    """One PostgreSQL server for the session (each test gets its own database on it)."""
    with postgres_server() as url:
        yield url


@pytest.fixture(params=BACKENDS)
def database(request, tmp_path):
    """Where a test's ralf keeps its tables: a DuckDB file, or a new PostgreSQL database.
    Reopening ``Ralf(database)`` finds what the test wrote."""
    if request.param == "duckdb":
        yield str(tmp_path / "features.duckdb")
        return
    url = new_postgres_database(request.getfixturevalue("postgres_url"))
    yield url
    drop_postgres_database(url)


@pytest.fixture(scope="module", params=BACKENDS)
def shared_database(request):
    """For a module-scoped Ralf: None (DuckDB in memory) or a new PostgreSQL database."""
    if request.param == "duckdb":
        yield None
        return
    url = new_postgres_database(request.getfixturevalue("postgres_url"))
    yield url
    drop_postgres_database(url)


@pytest.fixture(params=BACKENDS)
def make_ralf(request):
    """``make_ralf(**options)``: a Ralf on a new, empty database of the test's backend (an
    in-memory DuckDB, or a new PostgreSQL database), each call."""
    made = []

    def make(**options) -> Ralf:
        if request.param == "duckdb":
            return Ralf(**options)
        url = new_postgres_database(request.getfixturevalue("postgres_url"))
        made.append(url)
        return Ralf(url, **options)

    yield make
    for url in made:
        drop_postgres_database(url)


@pytest.fixture
def server(make_ralf):
    with make_ralf() as instance:
        yield instance


@pytest.fixture
def db_path(tmp_path):
    """A DuckDB file, for tests of the DuckDB backend itself (shell, file format)."""
    return str(tmp_path / "features.duckdb")
