"""Scale-out: an operator costing ~2 ms of CPU per record, locally, on Ray replicas, and
(with ``--postgres``) as sharded worker processes sharing a PostgreSQL database.

    python -m benchmarks.scaleout [--records 2000] [--users 200] [--postgres URL]

Prints records/s for the local executor and for Ray with 1 and 2 replicas, measured in
the same run, and the speed-up over local (target: >= 1.7x with 2 replicas on 2 cores).
``--postgres postgresql://user@host:port/db`` adds one process and two shard processes on
that server (each in a new database it creates and drops).
On a cluster, ``ray.init(address=...)`` before ``Ralf(..., executor="ray")`` spreads the
replicas over its nodes: a refresh costs one round trip per replica plus each replica's
share of the operator work, so throughput grows with replicas until the ralf process
(reading the log, committing, serving) or the network becomes the bottleneck.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from typing import Any

import numpy as np
import pandas as pd

from ralf import Operator, Ralf, Record, Schema
from ralf.testing import QueueSource, drop_postgres_database, new_postgres_database

EVENTS = Schema("user", {"user": int, "value": float})
SCORES = Schema("user", {"user": int, "score": float, "n": int})


class Expensive(Operator):
    """Spins ~2 ms of pure-Python CPU per record (a stand-in for model inference)."""

    def __init__(self, schema: Schema) -> None:
        self.totals: dict[int, tuple[float, int]] = {}

    def on_record(self, record: Record) -> Record:
        deadline = time.thread_time() + 0.002
        x = record.value
        while time.thread_time() < deadline:
            x = (x * 1.000001) % 1000.0
        total, n = self.totals.get(record.user, (0.0, 0))
        self.totals[record.user] = (total + x, n + 1)
        return Record(user=record.user, score=total + x, n=n + 1)


def run_pipeline(server: Ralf, frames: list[pd.DataFrame], ready: Any = None) -> float:
    """The benchmark's pipeline on ``server``: a warm-up frame (starts replicas, first
    refresh), then ``ready()``, then the seconds to ingest and refresh the other frames."""
    table = server.create_source(QueueSource, args=(EVENTS,), name="events")
    table.map(Expensive, args=(SCORES,), name="scores")
    queue = table._node.source
    queue.queue.append(frames[0])
    server.step()
    if ready is not None:
        ready()
    queue.queue.extend(frames[1:])
    start = time.perf_counter()
    while queue.queue or server._scheduler.features[0].has_work():
        server.step()
    return time.perf_counter() - start


def measure(executor: str, replicas: int, frames: list[pd.DataFrame]) -> float:
    with Ralf(executor=executor, num_replicas=replicas) as server:
        seconds = run_pipeline(server, frames)
        assert server.sql("SELECT sum(n) AS n FROM scores")["n"][0] == sum(map(len, frames))
    return sum(len(f) for f in frames[1:]) / seconds


def _shard(url: str, shard: int, num_shards: int, frames: list[pd.DataFrame],
           barrier: Any, result: Any) -> None:
    """One worker process: the pipeline on this shard's keys, started with the others."""
    with Ralf(url, shard=shard, num_shards=num_shards) as server:
        result.put(run_pipeline(server, frames, barrier.wait))


def measure_shards(server_url: str, num_shards: int, frames: list[pd.DataFrame]) -> float:
    """Records/s of ``num_shards`` worker processes on a new database: the work over the
    slowest worker's time from a common start."""
    url = new_postgres_database(server_url)
    try:
        Ralf(url).close()  # create the schema once, before the workers race for it
        context = mp.get_context("spawn")
        barrier, result = context.Barrier(num_shards), context.Queue()
        workers = [context.Process(target=_shard, args=(url, i, num_shards, frames, barrier,
                                                        result)) for i in range(num_shards)]
        for worker in workers:
            worker.start()
        seconds = max(result.get(timeout=600) for _ in workers)
        for worker in workers:
            worker.join()
        with Ralf(url) as reader:
            assert reader.sql("SELECT sum(n) AS n FROM scores")["n"][0] == sum(map(len, frames))
    finally:
        drop_postgres_database(url)
    return sum(len(f) for f in frames[1:]) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--postgres", default=None,
                        help="a PostgreSQL server URL: also measure 1 and 2 shard processes")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    data = pd.DataFrame({"user": rng.integers(1, args.users + 1, args.records),
                         "value": rng.random(args.records)})
    frames = [data.iloc[i:i + args.batch] for i in range(0, len(data), args.batch)]
    results = []
    for label, executor, replicas in (("local", "local", 1), ("ray, 1 replica", "ray", 1),
                                      ("ray, 2 replicas", "ray", 2)):
        print(f"measuring {label} ...", flush=True)
        results.append((label, measure(executor, replicas, frames)))
    if args.postgres:
        for shards in (1, 2):
            label = f"postgres, {shards} shard{'s' * (shards > 1)}"
            print(f"measuring {label} ...", flush=True)
            results.append((label, measure_shards(args.postgres, shards, frames)))
    local = results[0][1]
    print(f"\n{args.records:,} records, ~2 ms of CPU each, batches of {args.batch}\n")
    print(f"{'executor':<18}{'records/s':>12}{'vs local':>10}")
    for label, rate in results:
        print(f"{label:<18}{rate:>12,.0f}{rate / local:>9.2f}x")


if __name__ == "__main__":
    main()
