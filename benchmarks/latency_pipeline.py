"""The feature table the latency benchmark queries: per-user stats for N users."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from ralf import Operator, Ralf, Record, Schema, SourceOperator

RATINGS = Schema("user_id", {"user_id": int, "rating": float})
STATS = Schema("user_id", {"user_id": int, "average_rating": float, "n_ratings": int})


class Ratings(SourceOperator):
    def __init__(self, schema: Schema, users: int) -> None:
        rng = np.random.default_rng(1)
        self.frame = pd.DataFrame({"user_id": np.arange(1, users + 1),
                                   "rating": rng.integers(1, 6, users).astype(float)})
        self.done = False

    def next(self) -> pd.DataFrame | None:
        if self.done:
            return None
        self.done = True
        return self.frame

    def checkpoint(self) -> bool:
        return self.done

    def restore(self, done: bool) -> None:
        self.done = done


class UserStats(Operator):
    def __init__(self, schema: Schema) -> None:
        self.sums: dict[int, tuple[float, int]] = {}

    def on_record(self, record: Record) -> Record:
        s, n = self.sums.get(record.user_id, (0.0, 0))
        s, n = s + record.rating, n + 1
        self.sums[record.user_id] = (s, n)
        return Record(user_id=record.user_id, average_rating=s / n, n_ratings=n)


def build(server: Ralf) -> None:
    users = int(os.environ.get("RALF_BENCH_KEYS", "100000"))
    ratings = server.create_source(Ratings, args=(RATINGS, users), name="ratings")
    ratings.map(UserStats, args=(STATS,), name="user_stats")
