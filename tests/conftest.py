from __future__ import annotations

import pytest

from ralf import Ralf


@pytest.fixture
def server():
    with Ralf() as instance:
        yield instance


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "features.duckdb")
