"""The ralf tutorial, end to end, on a synthetic MovieLens-like stream.

Run it from the repository root::

    python examples/tutorial.py
    python -m examples.tutorial --ratings 20000 --db features.duckdb

The sections follow the tutorial:

1. a source table fed by a streaming ``SourceOperator``
2. feature tables (each user's average rating) and a load shedding policy
3. querying features with ``RalfClient``: point, bulk and SQL queries
4. user vectors: a lookup join of the ratings with fixed movie vectors
5. prioritizing active users: load shedding by activity
6. prioritizing active users: lottery scheduling under a refresh budget
7. lazy feature tables, refreshed when they are queried
8. time: a backfill with event time, "ratings in the last 7 days", and a training set
   whose every feature is as it was at each label's time (docs/time.md)

The data is generated with numpy from a seed, so every run computes the same features.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ralf import (
    KeyNotFound,
    LoadSheddingPolicy,
    Operator,
    PrioritizationPolicy,
    Ralf,
    RalfClient,
    Record,
    Schema,
    SourceOperator,
    Table,
)
from ralf.testing import ListSource

DIM = 8  # length of the movie and user vectors
BATCH_SIZE = 1000  # records per RatingsSource.next()

RATINGS_SCHEMA = Schema("user", {"user": int, "movie": int, "rating": float})
AVERAGE_SCHEMA = Schema("user", {"user": int, "average": float})
MOVIE_SCHEMA = Schema("movie", {"movie": int, "vector": list[float]})
USER_VECTOR_SCHEMA = Schema("user", {"user": int, "vector": list[float]})


# ---- a synthetic MovieLens ------------------------------------------------------------------
@dataclass
class MovieLens:
    """Ratings in arrival order, the movies' vectors and how active each user is."""

    ratings: list[dict[str, Any]]
    movie_vectors: dict[int, list[float]]
    active_minutes: dict[int, float]


def generate(n_ratings: int, n_users: int, n_movies: int, seed: int) -> MovieLens:
    """Skewed activity: user activity is lognormal, movie popularity Zipf-like.

    A rating is the rounded dot product of a hidden user taste and the movie's vector,
    plus noise. Every movie vector starts with a 1, so a user's first coordinate is their
    baseline rating.
    """
    rng = np.random.default_rng(seed)
    active = rng.lognormal(mean=3.0, sigma=1.0, size=n_users)  # minutes per day
    popularity = 1.0 / np.arange(1, n_movies + 1) ** 1.1
    rng.shuffle(popularity)
    users = rng.choice(n_users, size=n_ratings, p=active / active.sum())
    movies = rng.choice(n_movies, size=n_ratings, p=popularity / popularity.sum())

    movie_vecs = rng.normal(0.0, 0.6, size=(n_movies, DIM)).round(4)
    movie_vecs[:, 0] = 1.0
    taste = rng.normal(0.0, 0.6, size=(n_users, DIM))
    taste[:, 0] = rng.normal(3.5, 0.5, size=n_users)
    scores = np.einsum("ij,ij->i", taste[users], movie_vecs[movies])
    stars = np.clip(np.rint(scores + rng.normal(0.0, 0.5, size=n_ratings)), 1, 5)

    ratings = [
        {"user": u + 1, "movie": m + 1, "rating": r}
        for u, m, r in zip(users.tolist(), movies.tolist(), stars.tolist(), strict=True)
    ]
    return MovieLens(
        ratings=ratings,
        movie_vectors={m + 1: vec for m, vec in enumerate(movie_vecs.tolist())},
        active_minutes={u + 1: round(a, 1) for u, a in enumerate(active.tolist())},
    )


def write_movie_vectors(path: Path, vectors: dict[int, list[float]]) -> None:
    """movie,vector with the vector as a list literal: ``7,"[1.0, -0.3, ...]"``."""
    text = {movie: "[" + ", ".join(f"{x:g}" for x in vec) + "]" for movie, vec in vectors.items()}
    pd.DataFrame({"movie": list(text), "vector": list(text.values())}).to_csv(path, index=False)


def write_user_activity(path: Path, active_minutes: dict[int, float]) -> None:
    """user,active_minutes: how many minutes a day each user is active."""
    frame = pd.DataFrame({"user": list(active_minutes), "active_minutes": active_minutes.values()})
    frame.to_csv(path, index=False)


# ---- printing -------------------------------------------------------------------------------
def section(title: str) -> None:
    print(f"\n{'=' * 80}\n{title}\n{'=' * 80}")


def code(text: str) -> None:
    """Print the pipeline code a step runs, as if typed at a prompt."""
    for line in text.strip().splitlines():
        print(("... " if line[:1].isspace() else ">>> ") + line)


def show(expression: str, value: Any) -> None:
    """Print an expression as if typed at a prompt, then its value, indented."""
    code(expression)
    text = value.to_string() if isinstance(value, pd.DataFrame) else repr(value)
    print("    " + text.replace("\n", "\n    "))


def note(text: str) -> None:
    print(f"    # {text}")


@dataclass
class Demo:
    """What the sections share: the server, its client, the data and the tables so far."""

    server: Ralf
    client: RalfClient
    data: MovieLens
    files: Path  # where the CSV files go
    users: list[int]  # users whose features are printed
    tables: dict[str, Table] = field(default_factory=dict)

    def run(self) -> None:
        """server.run(), reporting how long it took."""
        started = time.perf_counter()
        self.server.run()
        code(f"server.run()    # {time.perf_counter() - started:.2f} s")

    def stale_keys(self, table: str) -> int:
        return self.server.metrics()["tables"][table]["stale_keys"]

    def in_list(self) -> str:
        return ", ".join(map(str, self.users))


def pick_users(data: MovieLens) -> list[int]:
    """User 40 (the tutorial's), the most active user and a typical one."""
    counts = Counter(row["user"] for row in data.ratings)
    by_activity = sorted(counts, key=counts.__getitem__)
    chosen = [40] if 40 in counts else []
    for user in (by_activity[-1], by_activity[len(by_activity) // 2]):
        if user not in chosen:
            chosen.append(user)
    return chosen


# ---- 1. Creating a source table -------------------------------------------------------------
class RatingsSource(SourceOperator):
    """Replays a list of ratings as a stream, ``batch_size`` records per ``next()``."""

    def __init__(self, schema: Schema, rows: list[dict[str, Any]],
                 batch_size: int = BATCH_SIZE) -> None:
        self.rows = rows
        self.batch_size = batch_size
        self.offset = 0

    def next(self) -> list[Record] | None:
        batch = self.rows[self.offset:self.offset + self.batch_size]
        if not batch:
            return None  # exhausted
        self.offset += len(batch)
        return [Record(**row) for row in batch]

    def checkpoint(self) -> int:
        """Saved with every batch, so a reopened database resumes the stream exactly."""
        return self.offset

    def restore(self, offset: int) -> None:
        self.offset = offset


def create_source(demo: Demo) -> None:
    section("1. Creating a source table")
    demo.tables["ratings"] = demo.server.create_source(
        RatingsSource, args=(RATINGS_SCHEMA, demo.data.ratings), name="ratings")
    code(f"schema = {RATINGS_SCHEMA!r}\n"
         "ratings = server.create_source(RatingsSource, args=(schema, rows), name='ratings')")
    note(f"{len(demo.data.ratings):,} ratings, {BATCH_SIZE} per next()")


# ---- 2. Creating feature tables and adding processing policies ------------------------------
class AverageRating(Operator):
    """Each user's average rating, from a running sum and count."""

    def __init__(self, schema: Schema) -> None:
        self.sums: dict[int, tuple[float, int]] = {}

    def on_record(self, record: Record) -> Record:
        total, count = self.sums.get(record.user, (0.0, 0))
        total, count = total + record.rating, count + 1
        self.sums[record.user] = (total, count)
        return Record(user=record.user, average=total / count)


class SampleHalf(LoadSheddingPolicy):
    """Process a random half of the records."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)

    def process(self, record: Record) -> bool:
        return self.rng.random() < 0.5


def feature_tables(demo: Demo) -> None:
    section("2. Creating feature tables and adding a load shedding policy")
    ratings = demo.tables["ratings"]
    average = ratings.map(AverageRating, args=(AVERAGE_SCHEMA,), name="average")
    average.add_load_shedding(SampleHalf)
    ratings.map(AverageRating, args=(AVERAGE_SCHEMA,), name="average_exact")
    code("average = ratings.map(AverageRating, args=(avg_schema,), name='average')\n"
         "average.add_load_shedding(SampleHalf)\n"
         "ratings.map(AverageRating, args=(avg_schema,), name='average_exact')  # unshed copy")
    demo.run()
    for name in ("ratings", "average", "average_exact"):
        m = demo.server.metrics()["tables"][name]
        note(f"{name:14} ingested={m['ingested']:,} processed={m['processed']:,} "
             f"shed={m['shed']:,}")


# ---- 3. Creating a ralf client --------------------------------------------------------------
def queries(demo: Demo) -> None:
    section("3. Querying features with a RalfClient")
    client, user = demo.client, demo.users[0]
    code("client = RalfClient(server)")
    try:
        show(f'client.point_query(table="average", key={user})',
             client.point_query(table="average", key=user))
    except KeyNotFound as exc:  # every rating of this user was shed
        note(f"KeyNotFound: {exc}")
    bulk = client.bulk_query(table="average")
    show('client.bulk_query(table="average").head()', bulk.head())
    note(f"{len(bulk):,} rows, one per user")
    show('client.sql("SELECT * FROM ratings ORDER BY _ralf_seq LIMIT 3")  # the append table',
         client.sql("SELECT * FROM ratings ORDER BY _ralf_seq LIMIT 3"))
    show("client.sql(...)  # sampled vs exact average for a few users", client.sql(f"""
        SELECT e.user, n.ratings, s.average AS sampled, e.average AS exact
        FROM average_exact e LEFT JOIN average s USING (user)
        JOIN (SELECT user, count(*) AS ratings FROM ratings GROUP BY user) n USING (user)
        WHERE e.user IN ({demo.in_list()}) ORDER BY n.ratings DESC"""))
    show("client.sql(...)  # how far sampling moves the averages", client.sql("""
        SELECT count(*) AS users, avg(abs(s.average - e.average)) AS mean_abs_error,
               max(abs(s.average - e.average)) AS max_abs_error
        FROM average s JOIN average_exact e USING (user)"""))


# ---- 4. Maintaining user vectors ------------------------------------------------------------
class UserVectors(Operator):
    """A user's vector: ridge regression of their ratings on the rated movies' vectors.

    Per user it keeps ``A = reg*I + sum(m m^T)`` and ``b = reg*prior + sum(rating * m)``
    and solves ``A u = b`` after each rating: the regularised least-squares fit over all
    of that user's ratings. The prior is a user who rates everything ``prior_mean``.
    """

    def __init__(self, schema: Schema, reg: float = 1.0, prior_mean: float = 3.5) -> None:
        self.reg = reg
        self.prior = np.zeros(DIM)
        self.prior[0] = prior_mean
        self.gram: dict[int, np.ndarray] = {}
        self.rhs: dict[int, np.ndarray] = {}

    def on_record(self, rating: Record, movie_vector: Record | None) -> Record | None:
        if movie_vector is None:
            return None  # a movie without a vector: nothing to learn from
        m = np.asarray(movie_vector.vector)
        user = rating.user
        if user not in self.gram:
            self.gram[user] = self.reg * np.eye(DIM)
            self.rhs[user] = self.reg * self.prior
        self.gram[user] += np.outer(m, m)
        self.rhs[user] += rating.rating * m
        vector = np.linalg.solve(self.gram[user], self.rhs[user])
        return Record(user=user, vector=vector.tolist())


def rmse(user_vectors: pd.DataFrame, movie_vectors: dict[int, list[float]],
         ratings: pd.DataFrame) -> float:
    """Root mean squared error of dot(user_vector, movie_vector) over the given ratings."""
    users = dict(zip(user_vectors["user"], user_vectors["vector"], strict=True))
    known = ratings[ratings["user"].isin(users.keys())]
    u = np.array([users[user] for user in known["user"]])
    m = np.array([movie_vectors[movie] for movie in known["movie"]])
    predicted = np.einsum("ij,ij->i", u, m)
    return float(np.sqrt(np.mean((predicted - known["rating"].to_numpy()) ** 2)))


def user_vectors(demo: Demo) -> None:
    section("4. Maintaining user vectors: a lookup join with fixed movie vectors")
    client, user = demo.client, demo.users[0]
    movie_csv = demo.files / "movie_vectors.csv"
    write_movie_vectors(movie_csv, demo.data.movie_vectors)
    movie_vectors = demo.server.create_csv_source(str(movie_csv), MOVIE_SCHEMA,
                                                  name="movie_vectors")
    demo.tables["movie_vectors"] = movie_vectors
    demo.tables["ratings"].join(movie_vectors, UserVectors, args=(USER_VECTOR_SCHEMA,),
                                on="movie", name="user_vectors")
    code("movie_vectors = server.create_csv_source('movie_vectors.csv', movie_schema, "
         "name='movie_vectors')\n"
         "ratings.join(movie_vectors, UserVectors, args=(user_vec_schema,), on='movie',\n"
         "             name='user_vectors')")
    note("new tables are backfilled from the ratings append table")
    demo.run()

    vector = client.point_query(table="user_vectors", key=user).vector
    show(f'client.point_query(table="user_vectors", key={user}).vector',
         [round(x, 3) for x in vector])
    latest = client.sql(f"SELECT movie, rating FROM ratings WHERE user = {user} "
                        "ORDER BY _ralf_seq DESC LIMIT 5")
    latest["predicted"] = [
        float(np.dot(vector, client.point_query(table="movie_vectors", key=movie).vector))
        for movie in latest["movie"]
    ]
    show(f"# user {user}'s latest ratings vs dot(user_vector, movie_vector)", latest.round(2))
    ratings = client.sql("SELECT user, movie, rating FROM ratings")
    error = rmse(client.bulk_query(table="user_vectors"), demo.data.movie_vectors, ratings)
    spread = float(ratings["rating"].std(ddof=0))
    note(f"RMSE over all ratings: {error:.3f} (predicting the global mean: {spread:.3f})")


# ---- 5. Prioritizing active users: load shedding by activity --------------------------------
class SampleActiveUsers(LoadSheddingPolicy):
    """Keep a rating with probability inversely proportional to its user's activity.

    Users up to the median activity keep every rating; a user twice as active as the
    median keeps half of theirs, and so on: they have ratings to spare.
    """

    def __init__(self, user_activity_csv: str | Path, seed: int = 0) -> None:
        user_activity = pd.read_csv(user_activity_csv)
        minutes = user_activity["active_minutes"]
        keep = (minutes.median() / minutes).clip(upper=1.0)
        self.weights = dict(zip(user_activity["user"].tolist(), keep.tolist(), strict=True))
        self.rng = random.Random(seed)

    def process(self, record: Record) -> bool:
        return self.rng.random() < self.weights.get(record.user, 1.0)


def active_user_sampling(demo: Demo) -> None:
    section("5. Prioritizing active users: load shedding by activity")
    client = demo.client
    activity_csv = demo.files / "user_active_time.csv"
    write_user_activity(activity_csv, demo.data.active_minutes)
    user_activity = pd.read_csv(activity_csv)
    code("user_activity = pd.read_csv('user_active_time.csv')")
    show("user_activity.head(3)", user_activity.head(3))
    minutes = user_activity["active_minutes"]
    note(f"active minutes per day: median {minutes.median():.1f}, max {minutes.max():.1f}")

    sampled = demo.tables["ratings"].join(
        demo.tables["movie_vectors"], UserVectors, args=(USER_VECTOR_SCHEMA,), on="movie",
        name="user_vectors_sampled")
    sampled.add_load_shedding(SampleActiveUsers, args=(activity_csv,))
    code("sampled = ratings.join(movie_vectors, UserVectors, args=(user_vec_schema,),\n"
         "                       on='movie', name='user_vectors_sampled')\n"
         "sampled.add_load_shedding(SampleActiveUsers, args=('user_active_time.csv',))")
    demo.run()

    m = demo.server.metrics()["tables"]["user_vectors_sampled"]
    ratings = client.sql("SELECT user, movie, rating FROM ratings")
    full = rmse(client.bulk_query(table="user_vectors"), demo.data.movie_vectors, ratings)
    part = rmse(client.bulk_query(table="user_vectors_sampled"), demo.data.movie_vectors,
                ratings)
    note(f"processed {m['processed']:,} ratings, shed {m['shed']:,}; "
         f"RMSE {part:.3f} (unsampled: {full:.3f})")
    distances = client.sql(f"""
        SELECT f.user, n.ratings, list_distance(f.vector, s.vector) AS distance
        FROM user_vectors f JOIN user_vectors_sampled s USING (user)
        JOIN (SELECT user, count(*) AS ratings FROM ratings GROUP BY user) n USING (user)
        WHERE f.user IN ({demo.in_list()}) ORDER BY n.ratings DESC""")
    distances.insert(1, "active_minutes",
                     distances["user"].map(user_activity.set_index("user")["active_minutes"]))
    show("client.sql(...)  # distance between sampled and full user vectors", distances)


# ---- 6. Prioritizing active users: lottery scheduling ---------------------------------------
class LotteryScheduling(PrioritizationPolicy):
    """Pick the next stale key by lottery; a user holds one ticket per active minute."""

    def __init__(self, user_activity_csv: str | Path, seed: int = 0) -> None:
        user_activity = pd.read_csv(user_activity_csv)
        self.weights = dict(zip(user_activity["user"].tolist(),
                                user_activity["active_minutes"].tolist(), strict=True))
        self.rng = random.Random(seed)

    def choose(self, keys: list[int]) -> int:
        tickets = [self.weights.get(key, 1.0) for key in keys]
        return self.rng.choices(keys, weights=tickets)[0]


def lottery_scheduling(demo: Demo) -> None:
    section("6. Prioritizing active users: lottery scheduling under a budget")
    activity_csv = demo.files / "user_active_time.csv"
    lottery = demo.tables["ratings"].join(
        demo.tables["movie_vectors"], UserVectors, args=(USER_VECTOR_SCHEMA,), on="movie",
        name="user_vectors_lottery", budget=50)
    lottery.add_prioritization_policy(LotteryScheduling, args=(activity_csv,))
    code("lottery = ratings.join(movie_vectors, UserVectors, args=(user_vec_schema,),\n"
         "                       on='movie', name='user_vectors_lottery', budget=50)\n"
         "lottery.add_prioritization_policy(LotteryScheduling, args=('user_active_time.csv',))")
    note(f"stale keys before any tick: {demo.stale_keys('user_vectors_lottery'):,}")
    for tick in range(1, 6):
        demo.server.step()
        code(f"server.step()    # tick {tick}: "
             f"{demo.stale_keys('user_vectors_lottery'):,} stale keys left")

    refreshed = demo.client.sql("SELECT user FROM user_vectors_lottery")["user"]
    rated = demo.client.sql("SELECT DISTINCT user FROM ratings")["user"]
    minutes = pd.read_csv(activity_csv).set_index("user")["active_minutes"]
    users = pd.DataFrame({"refreshed": rated.isin(refreshed), "active_minutes": rated.map(minutes)})
    show("# active minutes of the users refreshed so far vs the ones still waiting",
         users.groupby("refreshed")["active_minutes"].agg(["count", "mean", "median"])
         .sort_index(ascending=False).round(1))


# ---- 7. Updating features lazily ------------------------------------------------------------
def lazy_features(demo: Demo) -> None:
    section("7. Updating features lazily")
    client, user = demo.client, demo.users[0]
    demo.tables["ratings"].map(AverageRating, args=(AVERAGE_SCHEMA,), name="average_lazy",
                               lazy=True)
    code("ratings.map(AverageRating, args=(avg_schema,), name='average_lazy', lazy=True)")
    note("run() drains eager tables (user_vectors_lottery, 50 keys a tick) but never "
         "refreshes a lazy one")
    demo.run()
    rows = client.sql("SELECT count(*) AS n FROM average_lazy")["n"][0]
    code('server.metrics()["tables"]["average_lazy"]["stale_keys"]')
    note(f"{demo.stale_keys('average_lazy'):,} stale keys, {rows} rows stored")
    show(f'client.point_query(table="average_lazy", key={user}, with_metadata=True)',
         client.point_query(table="average_lazy", key=user, with_metadata=True))
    exact = client.point_query(table="average_exact", key=user).average
    note(f"the query refreshed key {user} first: {demo.stale_keys('average_lazy'):,} stale "
         f"keys left; the exact average is {exact}")
    rows = len(client.bulk_query(table="average_lazy"))
    code('client.bulk_query(table="average_lazy")')
    note(f"refreshes every stale key first: {rows:,} rows, "
         f"{demo.stale_keys('average_lazy')} stale keys left")


# ---- 8. Time: event time, windows and a training set from a backfill -------------------------
EVENTS_SCHEMA = Schema("user", {"user": int, "movie": int, "rating": float, "ts": datetime},
                       event_time="ts")
FIRST_DAY = datetime(1997, 9, 20)  # MovieLens 100K's ratings span seven months from here


def rating_events(data: MovieLens, seed: int) -> pd.DataFrame:
    """The same ratings with event times: whole seconds over seven months, in time order
    (a backfill exported ORDER BY time)."""
    rng = np.random.default_rng(seed)
    seconds = np.sort(rng.integers(0, 210 * 86400, len(data.ratings)))
    frame = pd.DataFrame(data.ratings)
    frame["ts"] = pd.Timestamp(FIRST_DAY) + pd.to_timedelta(seconds, unit="s")
    return frame


def time_and_training_data(demo: Demo) -> None:
    section("8. Time: ratings in the last 7 days, and training data from a backfill")
    events = rating_events(demo.data, seed=1)
    source = demo.server.create_source(ListSource, args=(EVENTS_SCHEMA, events, 10_000),
                                       name="rating_events")
    code("schema = Schema('user', {..., 'ts': datetime}, event_time='ts')\n"
         "events = server.create_source(ListSource, args=(schema, backfill, 10_000), "
         "name='rating_events')")
    source.aggregate(by="user", name="average_by_time", average=("rating", "avg"),
                     n=("*", "count"))
    source.aggregate(by="user", name="recent", n_7d=("*", "count", "7d"),
                     avg_7d=("rating", "avg", "7d"))
    code("events.aggregate(by='user', name='average_by_time', average=('rating', 'avg'), "
         "n=('*', 'count'))\n"
         "events.aggregate(by='user', name='recent', n_7d=('*', 'count', '7d'), "
         "avg_7d=('rating', 'avg', '7d'))")
    demo.run()
    user = demo.users[0]
    show(f"client.point_query('recent', {user}, with_metadata=True)",
         demo.client.point_query("recent", user, with_metadata=True))
    note("served now, years after the last rating: nobody rated in the last 7 days")
    labels = events.sample(5, random_state=0)[["user", "rating", "ts"]]
    entity_df = pd.DataFrame({"user": labels["user"].to_numpy(),
                              "event_timestamp": labels["ts"].to_numpy()
                              - np.timedelta64(1, "s"),  # just before the label happened
                              "label": labels["rating"].to_numpy()})
    training = demo.client.historical_query(
        entity_df, ["average_by_time.average", "average_by_time.n", "recent.n_7d",
                    "recent.avg_7d"])
    show("client.historical_query(entity_df, ['average_by_time.average', "
         "'average_by_time.n', 'recent.n_7d', 'recent.avg_7d'])", training)
    note("each feature as it was a second before its label's rating happened, though the "
         "whole backfill was applied in a few refreshes")


# ---- main -----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratings", type=int, default=100_000, help="ratings in the stream")
    parser.add_argument("--users", type=int, default=2_000, help="number of users")
    parser.add_argument("--movies", type=int, default=500, help="number of movies")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the data")
    parser.add_argument("--db", help="DuckDB file to keep the features in "
                        "(default: a new file in a temporary directory)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    pd.set_option("display.width", 120)
    data = generate(args.ratings, args.users, args.movies, args.seed)
    if args.db:
        db = Path(args.db)
    else:
        db = Path(tempfile.mkdtemp(prefix="ralf-tutorial-"), "features.duckdb")
    if db.exists():
        print(f"note: {db} exists; ralf resumes the pipeline stored there, so there is little "
              "left to process (pass a new --db to watch it all run)", file=sys.stderr)
    db.parent.mkdir(parents=True, exist_ok=True)
    print(f"ralf tutorial: {len(data.ratings):,} ratings by {args.users:,} users of "
          f"{args.movies:,} movies (seed {args.seed})")
    print(f">>> server = Ralf({str(db)!r})")

    with tempfile.TemporaryDirectory(prefix="ralf-tutorial-") as files, Ralf(str(db)) as server:
        demo = Demo(server, RalfClient(server), data, Path(files), pick_users(data))
        for step in (create_source, feature_tables, queries, user_vectors,
                     active_user_sampling, lottery_scheduling, lazy_features,
                     time_and_training_data):
            step(demo)

    section("Inspecting the features")
    print("Every table is a DuckDB table in the file; with the duckdb shell try:\n"
          f'    duckdb {db} -c "SELECT * FROM average LIMIT 5"')
    print(f"\ndone in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
