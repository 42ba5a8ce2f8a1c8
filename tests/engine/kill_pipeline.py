"""A pipeline run in a subprocess by test_durability, to be SIGKILLed and restarted.

Usage: python -m tests.engine.kill_pipeline DB_PATH N_RECORDS
Prints "tick <n>" after every step and "done" at the end.
"""

from __future__ import annotations

import sys

from ralf import Ralf, Record, Schema, SourceOperator
from tests.pipelines import AVERAGE, COUNT, AverageRating, CountPerKey

EVENTS = Schema("user", {"user": int, "id": int, "rating": float})


def events(n: int) -> list[dict]:
    return [{"user": (i * 7919) % 37, "id": i, "rating": float(i % 5 + 1)} for i in range(n)]


class GeneratorSource(SourceOperator):
    """No checkpoint(): ralf resumes it by replaying and skipping what was ingested."""

    def __init__(self, schema: Schema, n: int) -> None:
        self.rows = iter(events(n))

    def next(self) -> list[Record] | None:
        batch = [Record(**r) for _, r in zip(range(50), self.rows, strict=False)]
        return batch or None


def build(server: Ralf, n: int) -> None:
    source = server.create_source(GeneratorSource, args=(EVENTS, n), name="events")
    source.map(CountPerKey, args=(COUNT,), name="counts")
    source.map(AverageRating, args=(AVERAGE,), name="average")
    source.map(CountPerKey, args=(COUNT,), name="budgeted_counts", budget=4)
    source.map(CountPerKey, args=(COUNT,), name="lazy_counts", lazy=True)
    source.aggregate(by="user", n=("*", "count"), mean=("rating", "avg"), name="agg")
    source.sql("SELECT user, median(rating) AS med FROM events GROUP BY user", name="medians",
               budget=5)


def main() -> None:
    path, n = sys.argv[1], int(sys.argv[2])
    with Ralf(path) as server:
        build(server, n)
        tick = 0
        while True:
            server.step()
            tick += 1
            try:
                server.point_query("lazy_counts", tick % 37)  # lazy refresh on query
            except KeyError:
                pass
            print(f"tick {tick}", flush=True)
            if server._scheduler.drained():
                break
        print("done", flush=True)


if __name__ == "__main__":
    main()
