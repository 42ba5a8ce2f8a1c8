"""Forgetting a key (ralf.engine.forget): what goes, what stays, the audit row, a crash at
every step finished on reopen, and the HTTP route and command — on both backends."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ralf import Ralf, RalfClient, Record, Schema, SchemaError
from ralf.cli import main as cli
from ralf.errors import RalfError
from ralf.faults import InjectedFault, arm, disarm
from ralf.testing import QueueSource
from tests.pipelines import AVERAGE, RATINGS, AverageRating

ROOT = Path(__file__).resolve().parents[2]
ROWS = [{"user": u, "movie": m, "rating": float(u + m)} for u in (1, 2, 3) for m in (1, 2)]


class Totals(AverageRating):
    """Per-key sums, and a total over all keys (state a forget cannot reach alone) — with
    its own forget(key) for the per-key part."""

    def __init__(self, schema: Schema) -> None:
        super().__init__(schema)
        self.seen: set = set()

    def on_record(self, record: Record) -> Record:
        self.seen.add(record.user)
        return super().on_record(record)

    def on_delete(self, record: Record) -> None:
        return None

    def forget(self, key: int) -> None:
        self.seen.discard(key)
        self.sums.pop(key, None)


def build(server: Ralf, queue: QueueSource | None = None) -> QueueSource:
    queue = queue or QueueSource(RATINGS)
    source = server.create_source(queue, name="ratings", mode="changelog",
                                  key=["user", "movie"])
    source.map(AverageRating, args=(AVERAGE,), name="average")
    source.map(Totals, args=(AVERAGE,), name="totals", lazy=True)
    agg = source.aggregate(by="user", n=("*", "count"), name="per_user", budget=2)
    agg.sql("SELECT user, n * 2 AS twice FROM per_user", name="twice")
    source.sql("SELECT movie, count(*) AS n, sum(rating) AS s FROM ratings WHERE movie IS NOT "
               "NULL GROUP BY movie", name="per_movie")
    return queue


def _run(server: Ralf, ticks: int = 4) -> None:
    for _ in range(ticks):
        server.step()


def _count(server: Ralf, table: str, key: int = 2) -> int:
    return int(server.sql(f'SELECT count(*) AS n FROM {table} WHERE "user" = {key}')["n"][0])


def assert_forgotten(server: Ralf) -> None:
    """Key 2 is gone from every place it can be reached; the others are as they were."""
    for table in ("ratings", 'ralf."ratings__current"', "average", 'ralf."average__history"',
                  "per_user", 'ralf."per_user__history"', "twice", 'ralf."twice__history"',
                  "totals", 'ralf."totals__history"'):
        assert _count(server, table) == 0, table
    client = RalfClient(server)
    assert client.point_query("average", 1).average == 2.5
    per_movie = server.sql("SELECT movie, n, s FROM per_movie ORDER BY movie").values.tolist()
    assert per_movie == [[1, 2, 2.0 + 4.0], [2, 2, 3.0 + 5.0]]  # user 2's ratings out
    assert server.pipeline.node("average").operator.sums.keys() == {1, 3}
    assert 2 not in server.pipeline.node("totals").operator.seen
    audit = server.forgotten()
    assert len(audit) == 1 and audit["done_at"].notna().all()
    assert audit["key_sha256"][0] == hashlib.sha256(b"2").hexdigest()
    removed = json.loads(audit["removed"][0])
    assert removed["ratings"] == 4 and removed["average__history"] >= 1  # +1 and -1 rows
    assert "per_movie" not in removed  # keyed by another column: its rows retract instead


def test_forget_removes_every_trace_it_can_reach_and_leaves_an_audit_row(make_ralf):
    with make_ralf() as server:
        queue = build(server)
        queue.queue.append(ROWS)
        _run(server)
        RalfClient(server).point_query("totals", 2)  # the lazy table holds the key
        removed = server.forget("ratings", 2)
        assert removed["ratings"] == 4  # 2 records and their 2 retractions
        assert_forgotten(server)
        # the key can come back as a new key, and everything goes on
        queue.queue.append([{"user": 2, "movie": 1, "rating": 9.0}])
        _run(server)
        assert RalfClient(server).point_query("average", 2).average == 9.0


def test_the_audit_keeps_no_key_text(server):
    queue = build(server)
    queue.queue.append(ROWS)
    _run(server)
    server.forget("ratings", 2)
    stored = server.storage.sql('SELECT count(*) AS n FROM ralf."tables"')  # readable
    assert stored.num_rows == 1
    with pytest.raises(RalfError, match="internal to ralf"):
        server.sql("SELECT * FROM ralf.forgotten")  # the audit is read with forgotten()
    assert "key_text" not in server.forgotten().columns


def test_the_newest_sequence_number_survives_a_forget_and_a_reopen(database):
    """The forgotten rows may be a log's newest: a scrubbed row keeps its number, so rows
    appended after a reopen are still read by the tables derived from it."""
    with Ralf(database) as server:
        queue = build(server)
        queue.queue.append(ROWS)
        _run(server)
        server.forget("ratings", 3)  # its retraction rows are the log's newest
    with Ralf(database) as server:
        queue = QueueSource(RATINGS)
        queue.queue += [ROWS, [{"user": 1, "movie": 3, "rating": 7.0}]]  # replayed, then new
        build(server, queue)
        _run(server)
        assert RalfClient(server).point_query("average", 1).n == 3
        assert _count(server, "average", 3) == 0


@pytest.mark.parametrize("what, match", [
    ("append", "append-only source"), ("feature", "is not a source"),
])
def test_forget_is_refused_where_it_cannot_be_exact(server, what, match):
    if what == "append":
        server.create_source(QueueSource(RATINGS), name="ratings")
        table = "ratings"
    else:
        build(server)
        table = "average"
    with pytest.raises(SchemaError, match=match):
        server.forget(table, 1)


@pytest.mark.parametrize("point", ["forget.before_commit", "forget.after_ask",
                                   "forget.after_retract", "erase.before_commit",
                                   "forget.after_erase"])
def test_a_failure_at_any_step_leaves_memory_as_the_database_and_finishes_later(make_ralf,
                                                                                point):
    with make_ralf() as server:
        queue = build(server)
        queue.queue.append(ROWS)
        _run(server)
        RalfClient(server).point_query("totals", 2)
        arm(point)
        try:
            with pytest.raises(RalfError) as raised:
                server.forget("ratings", 2)
            assert isinstance(raised.value.__cause__, InjectedFault)
        finally:
            disarm()
        if point == "forget.before_commit":  # not acknowledged: nothing happened
            assert server.forgotten().empty and _count(server, "average") == 1
            server.forget("ratings", 2)
        else:  # acknowledged: finished by the next tick, as a reopen does
            server.step()
        _run(server)
        assert_forgotten(server)


@pytest.mark.parametrize("point", ["forget.after_ask", "forget.after_retract",
                                   "erase.before_commit"])
def test_sigkill_in_a_forget_is_finished_on_restart(database, point):
    script = ("import sys; from ralf import Ralf; from tests.engine.test_forget import ROWS, "
              "build, _run\n"
              "with Ralf(sys.argv[1]) as s:\n"
              "    q = build(s); q.queue.append(ROWS); _run(s); s.forget('ratings', 2)\n")
    env = {**os.environ, "RALF_CRASH_AT": point}
    run = subprocess.run([sys.executable, "-c", script, database], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == -9, run.stderr
    with Ralf(database) as server:
        queue = QueueSource(RATINGS)
        queue.queue.append(ROWS)  # replayed, and skipped: it was ingested
        build(server, queue)
        _run(server)
        RalfClient(server).bulk_query("totals")
        assert_forgotten(server)


def test_forget_over_http_needs_a_server_with_a_token(server):
    build(server)
    url = server.serve(port=0)
    with pytest.raises(RalfError, match="needs a server started with a bearer token"):
        RalfClient(url).forget("ratings", 2)


def test_forget_over_http_and_the_command_line_say_what_went(server):
    queue = build(server)
    queue.queue.append(ROWS)
    _run(server)
    url = server.serve(port=0, token="s3cret")
    with pytest.raises(RalfError):
        RalfClient(url).forget("ratings", 2)  # no token
    assert RalfClient(url, token="s3cret").forget("ratings", 2)["ratings"] == 4
    assert cli(["forget", "ratings", "1", "--url", url, "--token", "s3cret"]) == 0
    assert _count(server, "average", 1) == 0
