"""Pipeline pieces shared by tests (and by the subprocess that the kill tests SIGKILL)."""

from __future__ import annotations

import random

from ralf import Delete, Operator, Record, Schema

RATINGS = Schema("user", {"user": int, "movie": int, "rating": float})
AVERAGE = Schema("user", {"user": int, "average": float, "n": int})
COUNT = Schema("user", {"user": int, "count": int})


def ratings(n: int, users: int = 20, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"user": rng.randint(1, users), "movie": rng.randint(1, 50),
         "rating": float(rng.randint(1, 5))}
        for _ in range(n)
    ]


class AverageRating(Operator):
    def __init__(self, schema: Schema) -> None:
        self.sums: dict[int, tuple[float, int]] = {}

    def on_record(self, record: Record) -> Record:
        s, n = self.sums.get(record.user, (0.0, 0))
        s, n = s + record.rating, n + 1
        self.sums[record.user] = (s, n)
        return Record(user=record.user, average=s / n, n=n)


class AverageWithRetraction(AverageRating):
    """The average, taking a retracted record out of its sums (over a changelog)."""

    def on_delete(self, record: Record) -> Record | Delete:
        s, n = self.sums[record.user]
        s, n = s - record.rating, n - 1
        if n == 0:
            del self.sums[record.user]
            return Delete(record.user)
        self.sums[record.user] = (s, n)
        return Record(user=record.user, average=s / n, n=n)


class CountPerKey(Operator):
    """Counts records per key: exact counts prove exactly-once application."""

    def __init__(self, schema: Schema) -> None:
        self.counts: dict[int, int] = {}

    def on_record(self, record: Record) -> Record:
        self.counts[record.user] = self.counts.get(record.user, 0) + 1
        return Record(user=record.user, count=self.counts[record.user])

SINK = Schema("id", {"id": int, "value": int})


class Identity(Operator):
    def on_record(self, record: Record) -> Record:
        return record


class FailsOnUser(Operator):
    """Counts, but raises for one user, after touching its state (to test rollback)."""

    def __init__(self, schema: Schema, bad_user: int) -> None:
        self.bad_user = bad_user
        self.counts: dict[int, int] = {}

    def on_record(self, record: Record) -> Record:
        self.counts[record.user] = self.counts.get(record.user, 0) + 1  # mutate, then fail
        if record.user == self.bad_user:
            raise ValueError("boom")
        return Record(user=record.user, count=self.counts[record.user])
