"""Eight client threads query while ingestion and refresh run: no errors, no torn reads."""

from __future__ import annotations

import threading

from ralf import KeyNotFound, Operator, RalfClient, Record, Schema
from ralf.testing import ListSource
from tests.pipelines import RATINGS, ratings

CHECKED = Schema("user", {"user": int, "count": int, "twice": int, "label": str})


class Checked(Operator):
    """Every row carries redundant columns; a torn read would break their relation."""

    def __init__(self, schema):
        self.counts = {}

    def on_record(self, record):
        n = self.counts[record.user] = self.counts.get(record.user, 0) + 1
        return Record(user=record.user, count=n, twice=2 * n, label=f"{record.user}:{n}")


def _consistent(row) -> bool:
    return row["twice"] == 2 * row["count"] and row["label"] == f"{row['user']}:{row['count']}"


def test_eight_threads_of_point_bulk_and_sql_queries_during_processing(make_ralf):
    rows = ratings(20_000, users=50, seed=5)
    with make_ralf() as server:
        source = server.create_source(ListSource, args=(RATINGS, rows, 100), name="ratings")
        source.map(Checked, args=(CHECKED,), name="checked")
        source.map(Checked, args=(CHECKED,), name="checked_lazy", lazy=True)
        source.aggregate(by="user", n=("*", "count"), name="agg")
        url = server.serve(port=0)
        problems: list[str] = []
        done = threading.Event()

        def reader(i: int) -> None:
            client = RalfClient(url) if i % 2 else RalfClient(server)
            n = 0
            while not done.is_set() or n < 20:
                n += 1
                try:
                    table = "checked_lazy" if n % 3 == 0 else "checked"
                    row = client.point_query(table, n % 50 + 1).to_dict()
                    if not _consistent(row):
                        problems.append(f"torn point read {row}")
                    if n % 5 == 0:
                        for r in client.bulk_query("checked").to_dict("records"):
                            if not _consistent(r):
                                problems.append(f"torn bulk read {r}")
                    if n % 7 == 0:
                        df = client.sql("SELECT * FROM checked WHERE twice <> 2 * count")
                        if len(df):
                            problems.append(f"torn SQL read {df}")
                        client.point_query("agg", n % 50 + 1)
                except KeyNotFound:
                    pass  # not ingested yet
                except Exception as exc:  # noqa: BLE001 - any error fails the test
                    problems.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        server.start()
        server.run()  # alongside the background thread; both tick under the engine lock
        done.set()
        for t in threads:
            t.join()
        server.stop()
        assert problems == []
        assert server.sql("SELECT sum(count) AS n FROM checked")["n"][0] == 20_000
        assert server.sql("SELECT sum(n) AS n FROM agg")["n"][0] == 20_000
