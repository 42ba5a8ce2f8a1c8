"""OpenIVM's regression tests, ported to ralf: same data, same statements in the same order.

Source: OpenIVM, the incremental view maintenance extension for DuckDB (CWI), as the stored
copy names it: github.com/ila/openivm, commit 19ce35b1e282dfc8fbdebdb96e06a925c5fe3714
(2026-06-23), its sqllogictest files ``test/sql/*.test``. The cases are data:
tests/ivm/ports/openivm.json, one case per ``CREATE MATERIALIZED VIEW`` of those files, named
``<file>:<line>:<view>`` (the line of the CREATE statement). How a case runs:
tests/ivm/ports/harness.py. A check's expected rows are the sqllogictest result block. A
case's DELETE, UPDATE and TRUNCATE of its base tables run too (changelog sources: the changed
rows as delete and update records): the 92 views ralf maintains that stopped at one run past
it (tests/ivm/ports/extend.py added their steps from the peer's files), 90 of them to the
end, 2 up to a check of an aggregate without GROUP BY over no rows; 6 are expected failures
(``wrong``), an engine bug: a DELETE in a looked-up (joined) changelog source.

ralf's adaptations of a view (each case's ``note`` says which): a source's key is the view's
group column (a source holds many rows per key), a joined table's key its join column; an
output column without a name is named as DuckDB names it; a group column not selected is
selected first; ``SELECT DISTINCT c`` is ``SELECT c ... GROUP BY c``; an aggregate without
GROUP BY is grouped by a constant (``'all' AS scope ... GROUP BY scope``); a projection of a
view selects the view's key; outer parentheses around the SELECT are dropped (ralf refused
``(SELECT ...)`` when the port was written; it now reads it as the same SELECT); a DuckLake
catalog prefix (``dl.sales``) is dropped (the peer's catalog is an in-memory DuckDB here,
not DuckLake); DECIMAL columns are DOUBLE and DATE columns TIMESTAMP.

The cases run on DuckDB (one server in memory, shared by the cases). Counts and reasons of
the refused views: docs/ports.md.
"""

from __future__ import annotations

import pytest

from tests.ivm.ports.harness import Servers, peer_tests


@pytest.fixture(scope="module")
def servers():
    with Servers() as shared:
        yield shared


# The views ralf maintains like OpenIVM's, and the views it refuses (the reason's word).
test_openivm_view_is_maintained_like_openivm, test_openivm_view_ralf_refuses = peer_tests("openivm")
