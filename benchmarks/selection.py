"""How long one tick's key selection takes: k of n stale keys, for every built-in policy.

    python -m benchmarks.selection [--keys 1000000] [--choose 10000] [--repeat 5]

Prints a table of the median time per selection and its ratio to a uniform random choice
(ralf.policies.Random) over the same stale keys, measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time

import numpy as np

from ralf.engine.progress import Pending, PendingIndex, StaleKeys
from ralf.policies import (
    FIFO,
    LIFO,
    LeastRecentlyUpdated,
    Lottery,
    MostPending,
    QueryAware,
    Random,
    RoundRobin,
)

T0 = dt.datetime(2024, 1, 1)


def stale_keys(n: int, rng: np.random.Generator) -> tuple[PendingIndex, StaleKeys]:
    index = PendingIndex()
    counts = rng.zipf(1.5, size=n).clip(max=1000)
    for key in range(n):
        index.keys[key] = Pending(int(counts[key]), key + 1, T0 + dt.timedelta(microseconds=key),
                                  key + 1)
    return index, StaleKeys(index, set(), {}, T0 + dt.timedelta(hours=1))


def policies(n: int, rng: np.random.Generator, index: PendingIndex) -> dict[str, object]:
    order = list(index.keys)
    lifo, lru, rr = LIFO(), LeastRecentlyUpdated(), RoundRobin()
    for policy in (lifo, lru, rr):
        policy.on_pending(order)
    tickets = dict(zip(range(n), rng.lognormal(0, 1, n).tolist(), strict=True))
    query_aware = QueryAware()
    for key in rng.integers(0, n, 10_000).tolist():
        query_aware.on_query(key, T0)
    return {
        "FIFO": FIFO(), "LIFO": lifo, "MostPending": MostPending(),
        "LeastRecentlyUpdated": lru, "RoundRobin": rr, "Lottery": Lottery(tickets, seed=1),
        "QueryAware": query_aware,
    }


def measure(policy: object, view: StaleKeys, k: int, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        chosen = policy.choose_many(view, k)
        times.append(time.perf_counter() - start)
        assert len(chosen) == k and len(set(chosen)) == k
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--choose", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"building {args.keys:,} stale keys ...", flush=True)
    index, view = stale_keys(args.keys, rng)
    candidates = policies(args.keys, rng, index)
    baseline = measure(Random(seed=1), view, args.choose, args.repeat)
    print(f"\nchoosing {args.choose:,} of {args.keys:,} stale keys, median of {args.repeat}\n")
    print(f"{'policy':<22}{'ms':>10}{'x random':>10}")
    print(f"{'Random (baseline)':<22}{baseline * 1e3:>10.1f}{1.0:>10.2f}")
    for name, policy in candidates.items():
        seconds = measure(policy, view, args.choose, args.repeat)
        print(f"{name:<22}{seconds * 1e3:>10.1f}{seconds / baseline:>10.2f}", flush=True)


if __name__ == "__main__":
    main()
