"""pg_ivm's regression tests, ported to ralf: same data, same statements in the same order.

Source: pg_ivm, incremental view maintenance for PostgreSQL (SRA OSS),
github.com/sraoss/pg_ivm, commit 377a37dc72a922486d9d3d0c8caf2f7e91900c93 (2026-06-30,
"Prepare 1.15"): ``sql/pg_ivm.sql``, ``sql/outer_join.sql``, ``sql/create_immv.sql`` and
``sql/refresh_immv.sql`` with their expected output ``expected/*.out``. The cases are data:
tests/ivm/ports/pg_ivm.json, one case per ``pgivm.create_immv(name, query)`` call, named
``<file>:<line>:<immv>`` (the line of the call). How a case runs: tests/ivm/ports/harness.py,
as an OpenIVM case (tests/ivm/test_port_openivm.py); a case runs the peer's DELETE, UPDATE and
TRUNCATE of its base tables too (changelog sources: the changed rows as delete and update
records), and stops at the first statement ralf cannot run yet (a data-modifying WITH, a
ROLLBACK of changes made before the view's transaction, a check of an aggregate without GROUP
BY over no rows). The 11 IMMVs ralf maintains that stopped at a DELETE/UPDATE/TRUNCATE now
run past it: 8 to the end, 3 up to that aggregate of no rows (tests/ivm/ports/extend.py added
their steps from the peer's files).

A check's expected rows are those of the peer's expected output (``psql``'s table, its cells
tab-separated). pg_ivm's own hidden columns (``__ivm_count__`` ...) are left out of them
(ralf keeps its own bookkeeping columns apart as well), and rows are compared as multisets
(the ``ORDER BY 1,2,3`` of a ``SELECT *`` names pg_ivm's hidden columns too). An IMMV's column
list (``mv(a, b)``; for an IMMV without one, the names PostgreSQL gives: ``sum``, ``count``,
``avg`` ...) is the view's column names; ralf names its outputs with AS, and its key column
keeps its own name.

Every case runs on both backends (one server each, shared by the cases, each case's tables
named apart). The IMMVs pg_ivm refuses (an ERROR in its expected output) and the outer joins
are kept as definitions: a test that ralf refuses them too, with the reason's word. The ones
with no ralf counterpart (system columns, row level security, triggers, the automatic index
...) are counted in docs/ports.md.
"""

from __future__ import annotations

import pytest

from tests.ivm.ports.harness import Servers, peer_tests


@pytest.fixture(scope="module")
def servers(shared_database):
    """One server per backend (a DuckDB in memory, a PostgreSQL database) for all cases."""
    with Servers(shared_database) as shared:
        yield shared


# The views ralf maintains like pg_ivm's, and the views it refuses (the reason's word).
test_pg_ivm_view_is_maintained_like_pg_ivm, test_pg_ivm_view_ralf_refuses = peer_tests("pg_ivm")
