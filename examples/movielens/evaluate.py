"""How accurate do served user vectors stay when only some can be refreshed each tick?

Replays MovieLens ratings (or the synthetic stream) in time order through a ralf
pipeline — ``ratings.join(movie_vectors, UserVectors, on="movie", budget=N)`` — and
before each tick's ratings enter, predicts every one of them from the user vector ralf
serves at that moment (``client.point_query``), possibly stale. The prediction error is
both the score and the feedback (``client.record_error``) that accuracy-aware
scheduling uses. Each prioritization policy runs at each budget (a fraction of the
users per tick), plus one run without a budget: the ideal, whose every vector is fresh
at every tick. See docs/accuracy.md::

    python -m examples.movielens.evaluate                       # synthetic data
    python -m examples.movielens.evaluate --data ml-100k/u.data --out results.csv \\
        --plot results.png --budgets 0.01,0.05,0.1 --policies accuracy_aware,round_robin

Regret = MSE(policy) - MSE(ideal) over the same scored ratings: the squared error per
prediction that the budget costs. 0 for the ideal by definition.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import pandas as pd

from examples.movielens import data
from examples.movielens.features import (
    MOVIE_SCHEMA,
    RATINGS_SCHEMA,
    USER_SCHEMA,
    MovieVectors,
    UserVectors,
    train_movie_vectors,
)
from ralf import KeyNotFound, PrioritizationPolicy, Ralf, RalfClient
from ralf.policies import FIFO, AccuracyAware, Lottery, QueryAware, Random, RoundRobin
from ralf.testing import ListSource, ManualClock

USER_TABLE = "user_vectors"
IDEAL = "ideal"
CSV_COLUMNS = ["policy", "budget", "rmse", "regret", "refreshes"]


@dataclass
class Experiment:
    """The ratings to replay and what was learned from the training prefix."""

    ratings: pd.DataFrame  # in time order
    movies: MovieVectors
    train: int  # the first ``train`` ratings: ALS trains on them; replayed, never scored
    tick: int  # ratings per tick
    users: int  # distinct users in the ratings: what budget fractions are fractions of
    activity: dict[int, int]  # ratings per user in the training prefix (Lottery's tickets)
    seed: int

    @property
    def ticks(self) -> int:
        return math.ceil(len(self.ratings) / self.tick)

    def keys_per_tick(self, budget: float | None) -> int | None:
        """A budget given as a fraction of the users, in keys per tick (at least one)."""
        return None if budget is None else max(1, round(budget * self.users))


# snake_case name -> the policy for one run; the experiment supplies seeds and activity
POLICIES: dict[str, Callable[[Experiment], PrioritizationPolicy]] = {
    "accuracy_aware": lambda exp: AccuracyAware(),
    "round_robin": lambda exp: RoundRobin(),
    "fifo": lambda exp: FIFO(),
    "random": lambda exp: Random(seed=exp.seed),
    "lottery": lambda exp: Lottery(exp.activity, default=1.0, seed=exp.seed),
    "query_aware": lambda exp: QueryAware(),
}


def prepare(ratings: pd.DataFrame, *, tick: int | None = None, train_fraction: float = 0.2,
            dim: int = 8, seed: int = 0) -> Experiment:
    """Learn the movie vectors on the training prefix; the default tick is one rating per
    user, so a budget of ``f`` users per tick is also ``f`` refreshes per rating."""
    train = max(1, int(len(ratings) * train_fraction))
    prefix = ratings.iloc[:train]
    users = int(ratings["user"].nunique())
    return Experiment(
        ratings=ratings,
        movies=train_movie_vectors(prefix, dim=dim, seed=seed),
        train=train,
        tick=tick or users,
        users=users,
        activity=prefix["user"].value_counts().to_dict(),
        seed=seed,
    )


@dataclass
class Run:
    """One replay: its squared errors over the scored ratings and the refreshes it used."""

    policy: str
    budget: float | None  # fraction of users per tick; None = unlimited
    keys_per_tick: int | None
    squared_error: float
    scored: int
    refreshes: int
    most_refreshes_in_a_tick: int
    seconds: float

    @property
    def mse(self) -> float:
        return self.squared_error / max(self.scored, 1)

    @property
    def rmse(self) -> float:
        return math.sqrt(self.mse)


class Progress:
    """A log line per finished run, and one every ``every`` seconds during a run."""

    def __init__(self, out: TextIO | None, runs: int, every: float = 10.0) -> None:
        self.out, self.runs, self.every = out, runs, every
        self.done = 0
        self.started = time.perf_counter()
        self._last = self.started

    def tick(self, label: str, tick: int, ticks: int, rmse: float) -> None:
        now = time.perf_counter()
        if self.out is not None and now - self._last >= self.every:
            self._last = now
            self._line(f"{label}: tick {tick}/{ticks}, RMSE so far {rmse:.4f}")

    def finished(self, label: str, run: Run) -> None:
        self.done += 1
        self._last = time.perf_counter()
        if self.out is not None:
            self._line(f"{label}: RMSE {run.rmse:.4f}, {run.refreshes:,} refreshes, "
                       f"{run.seconds:.1f} s")

    def _line(self, text: str) -> None:
        elapsed = time.perf_counter() - self.started
        print(f"[{self.done}/{self.runs} runs, {elapsed:5.0f} s] {text}", file=self.out,
              flush=True)


def label(policy: str, budget: float | None) -> str:
    return policy if budget is None else f"{policy} @ {budget:g}"


def replay(exp: Experiment, policy: str, budget: float | None, progress: Progress) -> Run:
    """Replay every rating, tick by tick, with ``policy`` choosing the refreshes."""
    started = time.perf_counter()
    keys = exp.keys_per_tick(budget)
    clock = ManualClock()
    ratings = exp.ratings[data.COLUMNS]
    movie_row = {m: i for i, m in enumerate(exp.movies.movie.tolist())}
    dim = exp.movies.vector.shape[1]
    # an unknown movie: no vector; its bias is the training prefix's mean
    vectors = np.vstack([exp.movies.vector, np.zeros(dim)])
    biases = np.append(exp.movies.bias, exp.ratings["rating"].iloc[:exp.train].mean())
    rows = ratings["movie"].map(movie_row).fillna(len(movie_row)).to_numpy(dtype=np.int64)
    users = ratings["user"].tolist()
    stars = ratings["rating"].to_numpy()

    squared_error, scored, most = 0.0, 0, 0
    with Ralf(clock=clock) as server:
        client = RalfClient(server)
        movies = server.create_source(ListSource, args=(
            MOVIE_SCHEMA, exp.movies.rows(), len(exp.movies.movie)), name="movie_vectors")
        stream = server.create_source(ListSource, args=(RATINGS_SCHEMA, ratings, exp.tick),
                                      name="ratings")
        table = stream.join(movies, UserVectors, args=(USER_SCHEMA,), on="movie",
                            name=USER_TABLE, budget=keys)
        if policy != IDEAL:
            table.add_prioritization_policy(POLICIES[policy](exp))
        refreshes = 0
        for tick, start in enumerate(range(0, len(ratings), exp.tick), 1):
            stop = min(start + exp.tick, len(ratings))
            batch = users[start:stop]
            served = np.zeros((len(batch), dim + 1))  # [vector, bias]; zeros = no row yet
            for i, user in enumerate(batch):
                try:
                    row = client.point_query(USER_TABLE, user)
                except KeyNotFound:
                    continue
                served[i, :dim] = row.vector
                served[i, dim] = row.bias
            movie = rows[start:stop]
            predicted = (biases[movie] + served[:, dim]
                         + np.einsum("ij,ij->i", served[:, :dim], vectors[movie]))
            errors = predicted - stars[start:stop]
            for user, error in zip(batch, errors.tolist(), strict=True):
                client.record_error(USER_TABLE, user, error)
            first = max(exp.train - start, 0)
            squared_error += float(np.sum(errors[first:] ** 2))
            scored += len(errors) - min(first, len(errors))
            server.step()
            clock.advance(1.0)
            total = server.metrics()["tables"][USER_TABLE]["refreshes"]
            most, refreshes = max(most, total - refreshes), total
            progress.tick(label(policy, budget), tick, exp.ticks,
                          math.sqrt(squared_error / scored) if scored else float("nan"))
    run = Run(policy, budget, keys, squared_error, scored, refreshes, most,
              time.perf_counter() - started)
    progress.finished(label(policy, budget), run)
    return run


def evaluate(exp: Experiment, policies: list[str], budgets: list[float],
             progress: Progress | None = None) -> tuple[pd.DataFrame, list[Run]]:
    """The ideal run, then every policy at every budget; one row per run, with regret."""
    progress = progress or Progress(None, 0)
    runs = [replay(exp, IDEAL, None, progress)]
    runs += [replay(exp, policy, budget, progress) for budget in budgets for policy in policies]
    ideal = runs[0].mse
    table = pd.DataFrame({
        "policy": [r.policy for r in runs],
        "budget": [r.budget for r in runs],
        "rmse": [r.rmse for r in runs],
        "regret": [r.mse - ideal for r in runs],
        "refreshes": [r.refreshes for r in runs],
    })
    return table, runs


def report(table: pd.DataFrame, runs: list[Run], out: TextIO) -> None:
    """The results table (regret also relative to round robin's at the same budget), then
    how accuracy-aware scheduling compares with round robin."""
    rr = {row.budget: row.regret for row in table.itertuples() if row.policy == "round_robin"}
    lines = [f"{'policy':<16}{'budget':>8}{'keys/tick':>11}{'RMSE':>9}{'regret':>10}"
             f"{'vs RR':>8}{'refreshes':>12}{'seconds':>9}"]
    for row, run in zip(table.itertuples(), runs, strict=True):
        budget = "none" if pd.isna(row.budget) else f"{row.budget:g}"
        keys = "all" if run.keys_per_tick is None else f"{run.keys_per_tick:,}"
        base = rr.get(row.budget)
        versus = f"{row.regret / base:.2f}" if base and base > 0 else "-"
        lines.append(f"{row.policy:<16}{budget:>8}{keys:>11}{row.rmse:>9.4f}{row.regret:>10.5f}"
                     f"{versus:>8}{row.refreshes:>12,}{run.seconds:>9.1f}")
    for row in table[table["policy"] == "accuracy_aware"].itertuples():
        base = rr.get(row.budget)
        if base is None:
            continue
        lower = (f"regret {1 - row.regret / base:.0%} lower than round_robin's" if base > 0
                 else "no regret for either")
        needed = refreshes_to_match(table, "round_robin", row.rmse)
        match = ("does not reach it at any budget measured" if needed is None else
                 f"needs ~{needed:,.0f} refreshes ({needed / row.refreshes:.1f}x) to reach it")
        lines.append(f"accuracy_aware @ {row.budget:g}: {lower}; "
                     f"RMSE {row.rmse:.4f} with {row.refreshes:,} refreshes, round_robin {match}")
    print("\n".join(lines), file=out)


def refreshes_to_match(table: pd.DataFrame, policy: str, rmse: float) -> float | None:
    """Refreshes ``policy`` needs to get down to ``rmse``: interpolated linearly between
    its measured budgets (None when even its largest budget does not get there)."""
    rows = table[table["policy"] == policy].sort_values("refreshes")
    points = list(zip(rows["refreshes"], rows["rmse"], strict=True))
    if not points:
        return None
    if points[0][1] <= rmse:
        return float(points[0][0])
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if y1 <= rmse:
            return x0 + (x1 - x0) * (y0 - rmse) / (y0 - y1)
    return None


def plot(table: pd.DataFrame, path: str, title: str) -> None:
    """RMSE against refreshes spent: one line per policy through its budgets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, ax = plt.subplots(figsize=(8, 5))
    ideal = table[table["policy"] == IDEAL].iloc[0]
    for policy, rows in table[table["policy"] != IDEAL].groupby("policy", sort=False):
        rows = rows.sort_values("refreshes")
        ax.plot(rows["refreshes"], rows["rmse"], marker="o", label=policy)
    ax.axhline(ideal["rmse"], color="black", linestyle="--", linewidth=1,
               label=f"ideal (no budget, {ideal['refreshes']:,} refreshes)")
    ax.set_xscale("log")
    ax.set_xticks(sorted(table["refreshes"].unique()))  # the budgets measured, and the ideal
    ax.xaxis.set_major_formatter(ticker.StrMethodFormatter("{x:,.0f}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("refreshes spent (user-vector updates, log scale)")
    ax.set_ylabel("RMSE of served predictions")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fractions(text: str) -> list[float]:
    values = [float(x) for x in text.split(",") if x.strip()]
    if not values or any(not 0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"budgets are fractions of the users in (0, 1]: {text}")
    return values


def _policies(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [n for n in names if n not in POLICIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown policy {', '.join(unknown) or text!r}; choose from {', '.join(POLICIES)}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.movielens.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="a MovieLens ratings file (u.data, ratings.dat, "
                        "ratings.csv), a directory or .zip holding one; default: synthetic")
    parser.add_argument("--budgets", type=_fractions, default=[0.01, 0.05, 0.1],
                        help="fractions of the users refreshed per tick (default 0.01,0.05,0.1)")
    parser.add_argument("--policies", type=_policies, default=list(POLICIES),
                        help=f"comma-separated, from {','.join(POLICIES)} (default: all)")
    parser.add_argument("--out", help="write the results table to this CSV file")
    parser.add_argument("--plot", help="write RMSE against refreshes to this PNG file")
    parser.add_argument("--tick", type=int, help="ratings per tick (default: one per user)")
    parser.add_argument("--train-fraction", type=float, default=0.2,
                        help="leading fraction of the ratings ALS trains on (not scored)")
    parser.add_argument("--max-ratings", type=int, help="replay only the first N ratings")
    parser.add_argument("--dim", type=int, default=8, help="length of the vectors")
    parser.add_argument("--seed", type=int, default=0)
    for option in ("users", "movies", "ratings"):
        parser.add_argument(f"--{option}", type=int,
                            help=f"synthetic data: number of {option} (default: data.synthetic's)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.data:
        ratings, name = data.load(args.data), Path(args.data).name
    else:
        sizes = {k: getattr(args, k) for k in ("users", "movies", "ratings") if getattr(args, k)}
        ratings = data.synthetic(**sizes, dim=args.dim, seed=args.seed)
        name = "synthetic"
    if args.max_ratings:
        ratings = ratings.iloc[:args.max_ratings]
    exp = prepare(ratings, tick=args.tick, train_fraction=args.train_fraction, dim=args.dim,
                  seed=args.seed)
    print(f"{name}: {len(ratings):,} ratings by {exp.users:,} users of "
          f"{ratings['movie'].nunique():,} movies; movie vectors from the first {exp.train:,}; "
          f"{exp.ticks} ticks of {exp.tick:,} ratings")
    runs = 1 + len(args.policies) * len(args.budgets)
    progress = Progress(None if args.quiet else sys.stderr, runs)
    table, done = evaluate(exp, args.policies, args.budgets, progress)
    report(table, done, sys.stdout)
    if args.out:
        table.to_csv(args.out, columns=CSV_COLUMNS, index=False)
        print(f"wrote {args.out}")
    if args.plot:
        plot(table, args.plot, f"{name}: {len(ratings):,} ratings, {exp.users:,} users")
        print(f"wrote {args.plot}")
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
